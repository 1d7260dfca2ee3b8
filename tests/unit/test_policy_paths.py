"""Path normalization: the reference 03 cases a policy must not be bypassed by."""

from __future__ import annotations

import pytest

from ambient_fast.policy.paths import InvalidPath, normalize_path


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/public/../private", "/private"),
        ("/public/%2E%2E/private", "/private"),
        ("/public/%2e%2e/private", "/private"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/../../etc", "/etc"),
        ("/allow/admin?x=y", "/allow/admin"),
        ("/a\\b", "/a/b"),
        ("/%7Euser", "/~user"),
        ("/a%2fb", "/a%2Fb"),  # an encoded slash is not a separator, and stays encoded
        ("/", "/"),
        ("", "/"),
    ],
)
def test_normalization(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


def test_encoded_nul_is_rejected_naming_the_path() -> None:
    with pytest.raises(InvalidPath, match="/x%00y"):
        normalize_path("/x%00y")
