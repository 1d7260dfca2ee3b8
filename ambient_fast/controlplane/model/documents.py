"""The documents waypoints receive as written: JSON made once, when the document is parsed.

AuthorizationPolicies, RequestAuthentications and routes travel to waypoints as the user's
own documents (`KindSpec.keep_source`). The model keeps each as its JSON text, not the parsed
YAML tree: a few hundred bytes instead of several KiB of dicts, lists and strings.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Written by the API server, not by the user; never part of what a waypoint needs.
_SERVER_FIELDS = ("status",)
_SERVER_METADATA = ("managedFields", "resourceVersion", "generation")
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """A document as a waypoint receives it: its JSON, or why it cannot be sent as JSON."""

    json: str | None
    error: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> SourceDocument:
        try:
            return cls(document_json(body))
        except (TypeError, orjson.JSONEncodeError) as e:
            return cls(None, str(e))


def _json_default(value: object) -> str:
    # YAML turns unquoted timestamps into datetimes; the model keeps them as str() too.
    if isinstance(value, datetime.date | datetime.time):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def document_json(source: Mapping[str, Any]) -> str:
    """The document as JSON with sorted keys (deterministic: resource versions are hashes)."""
    trimmed = {k: v for k, v in source.items() if k not in _SERVER_FIELDS}
    metadata = trimmed.get("metadata")
    if isinstance(metadata, Mapping):
        trimmed["metadata"] = {k: v for k, v in metadata.items() if k not in _SERVER_METADATA}
    return orjson.dumps(trimmed, default=_json_default, option=_JSON_OPTIONS).decode()
