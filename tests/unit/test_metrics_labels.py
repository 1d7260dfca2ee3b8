"""ConnectionLabels.build: the istio_tcp_* label set as ztunnel fills it, for both reporters
and for captured, uncaptured and unknown peers."""

from __future__ import annotations

from ambient_fast.identity.spiffe import Identity
from ambient_fast.metrics import (
    LABEL_NAMES,
    ConnectionLabels,
    PeerBaggage,
    Reporter,
    ResponseFlag,
)
from ambient_fast.state.model import Locality, Service, TunnelProtocol, Workload

SLEEP = Workload(
    uid="Kubernetes//Pod/default/sleep-7656cf8794-xgwd9",
    name="sleep-7656cf8794-xgwd9",
    namespace="default",
    protocol=TunnelProtocol.HBONE,
    service_account="sleep",
    workload_name="sleep",
    canonical_name="sleep",
    canonical_revision="latest",
    locality=Locality("us-east1", "us-east1-b"),
)
HTTPBIN = Workload(
    uid="Kubernetes//Pod/apps/httpbin-86b8ffc5ff-bhvxx",
    name="httpbin-86b8ffc5ff-bhvxx",
    namespace="apps",
    protocol=TunnelProtocol.HBONE,
    service_account="httpbin",
    workload_name="httpbin",
    canonical_name="httpbin",
    canonical_revision="v1",
    cluster_id="east",
)
LEGACY = Workload(  # in the mesh's state, but not captured: reached in plaintext
    uid="Kubernetes//Pod/legacy/db-0",
    name="db-0",
    namespace="legacy",
    workload_name="db",
)
HTTPBIN_SVC = Service(name="httpbin", namespace="apps", hostname="httpbin.apps.svc.cluster.local")

UNKNOWN_DESTINATION = {
    "destination_service": "unknown",
    "destination_service_namespace": "unknown",
    "destination_service_name": "unknown",
    "destination_workload": "unknown",
    "destination_canonical_service": "unknown",
    "destination_canonical_revision": "unknown",
    "destination_workload_namespace": "unknown",
    "destination_principal": "unknown",
    "destination_app": "unknown",
    "destination_version": "unknown",
    "destination_cluster": "unknown",
    "destination_region": "unknown",
    "destination_zone": "unknown",
}


def as_dict(labels: ConnectionLabels) -> dict[str, str]:
    return dict(labels._asdict())


def test_label_names_are_ztunnels_in_order() -> None:
    assert LABEL_NAMES == (
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
        "source_region",
        "source_zone",
        "destination_region",
        "destination_zone",
    )


def test_outbound_hbone_to_a_service_fills_every_label() -> None:
    labels = ConnectionLabels.build(
        Reporter.SOURCE, SLEEP, SLEEP.identity, HTTPBIN, HTTPBIN_SVC, mtls=True
    )
    assert as_dict(labels) == {
        "reporter": "source",
        "source_workload": "sleep",
        "source_canonical_service": "sleep",
        "source_canonical_revision": "latest",
        "source_workload_namespace": "default",
        "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
        "source_app": "sleep",
        "source_version": "latest",
        "source_cluster": "Kubernetes",
        "destination_service": "httpbin.apps.svc.cluster.local",
        "destination_service_namespace": "apps",
        "destination_service_name": "httpbin",
        "destination_workload": "httpbin",
        "destination_canonical_service": "httpbin",
        "destination_canonical_revision": "v1",
        "destination_workload_namespace": "apps",
        "destination_principal": "spiffe://cluster.local/ns/apps/sa/httpbin",
        "destination_app": "httpbin",
        "destination_version": "v1",
        "destination_cluster": "east",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
        "source_region": "us-east1",
        "source_zone": "us-east1-b",
        "destination_region": "unknown",
        "destination_zone": "unknown",
    }


def test_outbound_plaintext_to_an_uncaptured_workload() -> None:
    labels = ConnectionLabels.build(Reporter.SOURCE, SLEEP, None, LEGACY, None, mtls=False)
    # No mTLS: no source principal and "unknown" policy (ztunnel never reports "none").
    assert labels.source_principal == "unknown"
    assert labels.connection_security_policy == "unknown"
    assert labels.source_workload == "sleep"
    # The destination is known from state even without a tunnel; empty fields are "unknown".
    assert labels.destination_workload == "db"
    assert labels.destination_workload_namespace == "legacy"
    assert labels.destination_principal == "spiffe://cluster.local/ns/legacy/sa/default"
    assert labels.destination_canonical_service == "unknown"
    assert labels.destination_canonical_revision == "unknown"
    assert labels.destination_service == "unknown"


def test_outbound_passthrough_to_an_unknown_destination() -> None:
    labels = ConnectionLabels.build(Reporter.SOURCE, SLEEP, None, None, None, mtls=False)
    assert {k: v for k, v in as_dict(labels).items() if k.startswith("destination_")} == (
        UNKNOWN_DESTINATION
    )
    assert labels.source_workload_namespace == "default"


def test_inbound_from_a_known_source_takes_the_principal_from_mtls() -> None:
    peer = Identity("cluster.local", "default", "other-account")  # what the certificate proves
    labels = ConnectionLabels.build(
        Reporter.DESTINATION, SLEEP, peer, HTTPBIN, HTTPBIN_SVC, mtls=True
    )
    assert labels.reporter == "destination"
    assert labels.source_principal == "spiffe://cluster.local/ns/default/sa/other-account"
    assert labels.source_workload == "sleep"
    assert labels.source_app == "sleep"
    assert labels.destination_service_name == "httpbin"


def test_inbound_from_an_unknown_source_knows_only_its_identity() -> None:
    peer = Identity("cluster.local", "remote", "client")
    labels = ConnectionLabels.build(Reporter.DESTINATION, None, peer, HTTPBIN, None, mtls=True)
    source = {k: v for k, v in as_dict(labels).items() if k.startswith("source_")}
    assert source == {
        "source_workload": "unknown",
        "source_canonical_service": "unknown",
        "source_canonical_revision": "unknown",
        # ztunnel takes the namespace from baggage, never from the identity.
        "source_workload_namespace": "unknown",
        "source_principal": "spiffe://cluster.local/ns/remote/sa/client",
        "source_app": "unknown",
        "source_version": "unknown",
        "source_cluster": "unknown",
        "source_region": "unknown",
        "source_zone": "unknown",
    }


def test_inbound_baggage_fills_what_state_does_not_know() -> None:
    peer = Identity("cluster.local", "remote", "client")
    baggage = PeerBaggage(
        workload_name="client", namespace="remote", revision="v2", cluster_id="west"
    )
    labels = ConnectionLabels.build(
        Reporter.DESTINATION, None, peer, HTTPBIN, None, mtls=True, baggage=baggage
    )
    assert labels.source_workload == "client"
    assert labels.source_app == "client"  # ztunnel: app = workload name for a derived source
    assert labels.source_canonical_service == "unknown"
    assert labels.source_canonical_revision == "v2"
    assert labels.source_version == "v2"
    assert labels.source_workload_namespace == "remote"
    assert labels.source_cluster == "west"


def test_a_known_source_workload_wins_over_baggage() -> None:
    baggage = PeerBaggage(workload_name="liar", namespace="elsewhere", revision="v9")
    labels = ConnectionLabels.build(
        Reporter.DESTINATION, SLEEP, SLEEP.identity, HTTPBIN, None, mtls=True, baggage=baggage
    )
    assert labels.source_workload == "sleep"
    assert labels.source_workload_namespace == "default"
    assert labels.source_canonical_revision == "latest"


def test_inbound_plaintext_has_unknown_source_and_policy() -> None:
    labels = ConnectionLabels.build(Reporter.DESTINATION, None, None, HTTPBIN, None, mtls=False)
    assert labels.source_principal == "unknown"
    assert labels.source_workload == "unknown"
    assert labels.connection_security_policy == "unknown"
    assert labels.destination_workload == "httpbin"


def test_a_flag_changes_only_response_flags() -> None:
    labels = ConnectionLabels.build(Reporter.SOURCE, SLEEP, None, None, None, mtls=False)
    denied = labels.with_flag(ResponseFlag.DENY)
    assert denied.response_flags == "DENY"
    assert labels.with_flag(ResponseFlag.CONNECT).response_flags == "CONNECT"
    assert denied._replace(response_flags="-") == labels
