"""Typed reads of YAML-shaped values that name the offending field when the input is wrong.

Every reader takes the parent mapping, the key and the parent's path (`spec.ports[1]`) and
raises `FieldError(path, message)`; the loader turns that into a `ModelError`. Paths use
kubectl's form: dotted keys, 0-based list indexes.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ambient_fast.controlplane.model.sharing import SharedMaps

Obj = Mapping[str, Any]

_EMPTY: Obj = {}
# Go/Gateway API durations: "10s", "1m30s", "500ms", "1.5h".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Kubernetes DNS-1123 subdomain (object names) and label (namespaces, port names).
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class FieldError(Exception):
    """A value that does not fit its field; internal, reported as a `ModelError`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: object) -> str:
    """How a wrong value is quoted back to the user (JSON spelling, collections by type)."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value, ensure_ascii=False)
    return type(value).__name__


def as_mapping(value: object, path: str) -> Obj:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise FieldError(path, f"expected a mapping, got {describe(value)}")
    return value


def opt_map(obj: Obj, key: str, path: str) -> Obj:
    value = obj.get(key)
    if value.__class__ is dict:  # the common case, checked first: this runs per field
        return value
    return as_mapping(value, join(path, key))


def opt_list(obj: Obj, key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if value.__class__ is not list:
        raise FieldError(join(path, key), f"expected a list, got {describe(value)}")
    return value


def each_map(obj: Obj, key: str, path: str) -> Iterator[tuple[str, Obj]]:
    """The items of a list of mappings, each with its own path (`spec.ports[0]`)."""
    items = obj.get(key)
    if items is None:
        return
    base = join(path, key)
    if items.__class__ is not list:
        raise FieldError(base, f"expected a list, got {describe(items)}")
    for i, item in enumerate(items):
        item_path = f"{base}[{i}]"
        yield item_path, as_mapping(item, item_path)


def opt_str(obj: Obj, key: str, path: str, default: str | None = None) -> str | None:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise FieldError(join(path, key), f"expected a string, got {describe(value)}")
    return _shared(value)


def req_str(obj: Obj, key: str, path: str) -> str:
    value = opt_str(obj, key, path)
    if not value:
        raise FieldError(join(path, key), "required")
    return value


def str_or(obj: Obj, key: str, path: str, default: str) -> str:
    value = opt_str(obj, key, path)
    return default if value is None else value


def opt_int(obj: Obj, key: str, path: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python; `port: true` is still wrong.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FieldError(
            join(path, key), f"expected an integer {low}-{high}, got {describe(value)}"
        )
    return value


def req_int(obj: Obj, key: str, path: str, low: int, high: int) -> int:
    value = opt_int(obj, key, path, low, high)
    if value is None:
        raise FieldError(join(path, key), "required")
    return value


def opt_port(obj: Obj, key: str, path: str) -> int | None:
    return opt_int(obj, key, path, 1, 65535)


def req_port(obj: Obj, key: str, path: str) -> int:
    return req_int(obj, key, path, 1, 65535)


def opt_bool(obj: Obj, key: str, path: str, default: bool = False) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(join(path, key), f"expected true or false, got {describe(value)}")
    return value


def str_list(obj: Obj, key: str, path: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    for i, item in enumerate(opt_list(obj, key, path)):
        if item.__class__ is not str:
            raise FieldError(f"{join(path, key)}[{i}]", f"expected a string, got {describe(item)}")
    return tuple(map(_shared, value))


def str_map(obj: Obj, key: str, path: str) -> Mapping[str, str]:
    """A string-to-string mapping such as labels; numbers must be quoted, as in Kubernetes.
    The same labels repeat on thousands of objects: equal maps are one shared map (every
    empty one the same read-only map), keys and short values are interned."""
    raw = opt_map(obj, key, path)
    for k, v in raw.items():
        if k.__class__ is not str or v.__class__ is not str:
            raise FieldError(
                f"{join(path, key)}.{k}", f"expected a string value, got {describe(v)}"
            )
    if not raw:
        return _NO_STRINGS
    return _MAPS.get({sys.intern(k): _shared(v) for k, v in raw.items()})


_NO_STRINGS: Mapping[str, str] = MappingProxyType({})
_MAPS = SharedMaps()
# Strings up to this long are interned: names, label values (at most 63 characters in
# Kubernetes), port names, protocols, actions repeat on thousands of objects.
_INTERNED_MAX = 63


def _shared(value: str) -> str:
    """The one copy of a short string (interned strings are freed when no longer used)."""
    return sys.intern(value) if len(value) <= _INTERNED_MAX else value


def one_of(obj: Obj, key: str, path: str, allowed: tuple[str, ...], default: str) -> str:
    value = str_or(obj, key, path, default)
    if value not in allowed:
        expected = ", ".join(allowed)
        raise FieldError(join(path, key), f"expected one of {expected}, got {describe(value)}")
    return value


def opt_duration(obj: Obj, key: str, path: str) -> float | None:
    """A Go/Gateway API duration string ("10s", "1m30s", "500ms") in seconds."""
    value = opt_str(obj, key, path)
    if value is None:
        return None
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise FieldError(
            join(path, key), f'expected a duration such as "10s", got {describe(value)}'
        )
    return total


def check_name(value: str, path: str, *, label: bool = False) -> str:
    """Kubernetes object names: DNS-1123 subdomain (or label for namespaces), lower case."""
    pattern, limit = (_DNS1123_LABEL, 63) if label else (_DNS1123_SUBDOMAIN, 253)
    if len(value) > limit or not pattern.fullmatch(value):
        what = "DNS-1123 label" if label else "DNS-1123 subdomain"
        raise FieldError(
            path, f"expected a {what} (lower case a-z, 0-9, '-'), got {describe(value)}"
        )
    return value


def check_ip(value: str, path: str) -> str:
    """An IPv4 or IPv6 address, returned in canonical form."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise FieldError(path, f"expected an IP address, got {describe(value)}") from None


def check_ip_or_cidr(value: str, path: str) -> str:
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise FieldError(path, f"expected an IP address or CIDR, got {describe(value)}") from None
