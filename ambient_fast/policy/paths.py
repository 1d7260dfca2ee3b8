"""HTTP path normalization before policy matching (Istio's default, BASE).

Resolves `.`/`..` segments, decodes only percent-encoded unreserved characters, turns `\\`
into `/` and strips the query, so `/public/%2E%2E/private` cannot slip past a policy on
`/private`. `%00` is rejected (the waypoint answers 400).
"""

from __future__ import annotations

import re

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 unreserved characters: the only ones BASE normalization decodes.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class InvalidPath(ValueError):
    """A request path that cannot be normalized safely (-> 400)."""


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    # A trailing dot segment still names a directory: keep the slash.
    trailing = path.endswith(("/.", "/..")) and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


def normalize_path(raw: str) -> str:
    """The path a policy sees; raises InvalidPath naming the input."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if re.search(r"%00", path):
        raise InvalidPath(f"path {raw!r}: encoded NUL")
    path = _PERCENT.sub(_decode_unreserved, path.replace("\\", "/"))
    if not path.startswith("/"):
        path = "/" + path
    return _remove_dot_segments(path)
