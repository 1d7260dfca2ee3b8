"""xDS resources as JSON for people: proto3 JSON, with IP bytes written as addresses."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

# Fields that carry packed IPs (Workload.addresses, NetworkAddress.address, policy Address).
_IP_FIELDS = ("address", "addresses")


def _ip_text(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return value
    return str(ipaddress.ip_address(raw)) if len(raw) in (4, 16) else value


def _readable(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _readable(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_readable(v, key) for v in node]
    if isinstance(node, str) and key in _IP_FIELDS:
        return _ip_text(node)
    return node


def message_json(message: Message) -> dict[str, Any]:
    """One resource as a JSON-ready dict (camelCase field names, enums by name)."""
    rendered: dict[str, Any] = _readable(json_format.MessageToDict(message))
    return rendered
