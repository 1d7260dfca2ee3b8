"""The label set of Istio's TCP metrics, filled as ztunnel fills it (src/proxy/metrics.rs).

`ConnectionLabels.build` is the pure counterpart of ztunnel's `CommonTrafficLabels::from(
ConnectionOpen)`: the derived source (the peer's mTLS identity and its baggage) first, then the
source workload from our own state (more reliable), then the destination workload and service.
Every value ztunnel does not know is the string `unknown` (its `DefaultedUnknown`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from ambient_fast.identity.spiffe import Identity
from ambient_fast.state.model import Service, Workload

# ztunnel's DefaultedUnknown encodes a missing or empty value as this string.
UNKNOWN = "unknown"


class Reporter(enum.Enum):
    """Which end of the connection this proxy is (ztunnel `Reporter`, label `reporter`)."""

    SOURCE = "source"  # outbound: the client's node proxy
    DESTINATION = "destination"  # inbound: the server's node proxy

    @property
    def direction(self) -> str:
        """The access log's `direction` for this reporter."""
        return "outbound" if self is Reporter.SOURCE else "inbound"


class ResponseFlag(enum.Enum):
    """Why a connection ended early (ztunnel `ResponseFlags`, label `response_flags`)."""

    NONE = "-"
    DENY = "DENY"  # AuthorizationPolicyDenied
    CONNECT = "CONNECT"  # ConnectionFailure: no upstream connection could be made


class SecurityPolicy(enum.Enum):
    """ztunnel `SecurityPolicy`: it never reports `none`; plaintext is `unknown`."""

    MUTUAL_TLS = "mutual_tls"
    UNKNOWN = UNKNOWN


@dataclass(frozen=True, slots=True)
class PeerBaggage:
    """What an inbound peer says about itself in the HBONE `baggage` header (ztunnel's
    DerivedWorkload fields); used only while its source workload is not in our state."""

    workload_name: str = ""
    namespace: str = ""
    revision: str = ""
    cluster_id: str = ""


def _known(value: str) -> str:
    return value or UNKNOWN


class ConnectionLabels(NamedTuple):
    """One connection's labels, in ztunnel's order (CommonTrafficLabels + LocalityLabels).

    A tuple on purpose: it is the key of every TCP series, compared and hashed per connection.
    """

    reporter: str
    source_workload: str
    source_canonical_service: str
    source_canonical_revision: str
    source_workload_namespace: str
    source_principal: str
    source_app: str
    source_version: str
    source_cluster: str
    destination_service: str
    destination_service_namespace: str
    destination_service_name: str
    destination_workload: str
    destination_canonical_service: str
    destination_canonical_revision: str
    destination_workload_namespace: str
    destination_principal: str
    destination_app: str
    destination_version: str
    destination_cluster: str
    request_protocol: str
    response_flags: str
    connection_security_policy: str
    # Locality (ztunnel PR #1441): present in every series because a ztunnel connection always
    # has a source, a derived source or a destination, each of which turns them on.
    source_region: str
    source_zone: str
    destination_region: str
    destination_zone: str

    @classmethod
    def build(
        cls,
        reporter: Reporter,
        source: Workload | None,
        source_identity: Identity | None,
        destination: Workload | None,
        service: Service | None,
        mtls: bool,
        *,
        baggage: PeerBaggage | None = None,
    ) -> ConnectionLabels:
        """Labels for a connection as it opens.

        `source_identity` is the identity proven by mTLS: the peer's certificate on inbound, our
        own workload's on outbound HBONE; None for plaintext. It alone sets source_principal
        (ztunnel never takes the principal from the source workload's service account).
        """
        src = dict.fromkeys(_SOURCE_FIELDS, UNKNOWN)
        if source_identity is not None or baggage is not None:
            derived = baggage or PeerBaggage()
            src["source_workload"] = _known(derived.workload_name)
            src["source_canonical_revision"] = _known(derived.revision)
            src["source_workload_namespace"] = _known(derived.namespace)
            src["source_app"] = _known(derived.workload_name)
            src["source_version"] = _known(derived.revision)
            src["source_cluster"] = _known(derived.cluster_id)
            if source_identity is not None:
                src["source_principal"] = str(source_identity)
        if source is not None:
            src["source_workload"] = _known(source.workload_name)
            src["source_canonical_service"] = _known(source.canonical_name)
            src["source_canonical_revision"] = _known(source.canonical_revision)
            src["source_workload_namespace"] = _known(source.namespace)
            src["source_app"] = _known(source.canonical_name)
            src["source_version"] = _known(source.canonical_revision)
            src["source_cluster"] = _known(source.cluster_id)
            src["source_region"] = _known(source.locality.region)
            src["source_zone"] = _known(source.locality.zone)

        dst = dict.fromkeys(_DESTINATION_FIELDS, UNKNOWN)
        if destination is not None:
            dst["destination_workload"] = _known(destination.workload_name)
            dst["destination_canonical_service"] = _known(destination.canonical_name)
            dst["destination_canonical_revision"] = _known(destination.canonical_revision)
            dst["destination_workload_namespace"] = _known(destination.namespace)
            dst["destination_principal"] = str(destination.identity)
            dst["destination_app"] = _known(destination.canonical_name)
            dst["destination_version"] = _known(destination.canonical_revision)
            dst["destination_cluster"] = _known(destination.cluster_id)
            dst["destination_region"] = _known(destination.locality.region)
            dst["destination_zone"] = _known(destination.locality.zone)
        if service is not None:
            dst["destination_service"] = _known(service.hostname)
            dst["destination_service_name"] = _known(service.name)
            dst["destination_service_namespace"] = _known(service.namespace)

        policy = SecurityPolicy.MUTUAL_TLS if mtls else SecurityPolicy.UNKNOWN
        return cls(
            reporter=reporter.value,
            request_protocol="tcp",  # ztunnel's RequestProtocol: always tcp at L4
            response_flags=ResponseFlag.NONE.value,
            connection_security_policy=policy.value,
            **src,
            **dst,
        )

    @property
    def mtls(self) -> bool:
        return self.connection_security_policy == SecurityPolicy.MUTUAL_TLS.value

    def with_flag(self, flag: ResponseFlag) -> ConnectionLabels:
        return self._replace(response_flags=flag.value)


_SOURCE_FIELDS = tuple(f for f in ConnectionLabels._fields if f.startswith("source_"))
_DESTINATION_FIELDS = tuple(f for f in ConnectionLabels._fields if f.startswith("destination_"))

# The label names of every istio_tcp_* series, in ztunnel's order.
LABEL_NAMES: tuple[str, ...] = ConnectionLabels._fields
