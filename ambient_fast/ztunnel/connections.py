"""A proxy's open connections as ztunnel's connection manager dumps them: `workloadState.<uid>.
connections` of /config_dump, which `istioctl ztunnel-config connections` lists.

Inbound entries: the peer's address, the destination service's hostname (null when unknown),
the workload address dialled, HBONE (15008) or TCP (15006). Outbound entries: the client's
address, the destination it dialled, what the proxy dialled instead (a :15008 for HBONE), HBONE
or TCP.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ConnectionProtocol(Enum):
    """ztunnel's Protocol enum, spelled as it serializes."""

    TCP = "TCP"
    HBONE = "HBONE"


@dataclass(frozen=True, slots=True)
class ConnectionEntry:
    src: str
    original_dst: str | None
    actual_dst: str
    protocol: ConnectionProtocol

    def dump(self) -> dict[str, str | None]:
        return {
            "src": self.src,
            "originalDst": self.original_dst,
            "actualDst": self.actual_dst,
            "protocol": self.protocol.value,
        }


class OpenConnections:
    """The entries of connections open now, each under a key its owner removes it by."""

    def __init__(self) -> None:
        self._open: dict[object, ConnectionEntry] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: object, entry: ConnectionEntry) -> None:
        self._open[key] = entry

    def remove(self, key: object) -> None:
        self._open.pop(key, None)

    def dump(self) -> list[dict[str, str | None]]:
        return [entry.dump() for entry in self._open.values()]
