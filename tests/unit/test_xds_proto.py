"""The wire contract of our .proto files: names and field numbers a real istiod/ztunnel uses."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpclib.server import Stream

from ambient_fast.xds.proto import (
    authorization_pb2,
    citadel_grpc,
    citadel_pb2,
    core_pb2,
    discovery_grpc,
    discovery_pb2,
    waypoint_pb2,
    workload_pb2,
    zds_pb2,
)

FILES: list[FileDescriptor] = [
    module.DESCRIPTOR
    for module in (
        authorization_pb2,
        citadel_pb2,
        core_pb2,
        discovery_pb2,
        waypoint_pb2,
        workload_pb2,
        zds_pb2,
    )
]

# (message full name, field, number): from istio/ztunnel proto/ and envoyproxy/data-plane-api.
CONTRACT = [
    ("istio.workload.Address", "workload", 1),
    ("istio.workload.Address", "service", 2),
    ("istio.workload.Workload", "uid", 20),
    ("istio.workload.Workload", "addresses", 3),
    ("istio.workload.Workload", "tunnel_protocol", 5),
    ("istio.workload.Workload", "waypoint", 8),
    ("istio.workload.Workload", "network_gateway", 19),
    ("istio.workload.Workload", "services", 22),
    ("istio.workload.Workload", "application_tunnel", 23),
    ("istio.workload.Workload", "capacity", 27),
    ("istio.workload.Service", "waypoint", 7),
    ("istio.workload.Service", "load_balancing", 8),
    ("istio.workload.GatewayAddress", "hbone_mtls_port", 3),
    ("istio.workload.NetworkAddress", "network", 1),
    ("istio.workload.NetworkAddress", "address", 2),
    ("istio.security.Authorization", "rules", 5),
    ("istio.security.Authorization", "dry_run", 6),
    ("istio.security.Clause", "matches", 2),
    ("istio.security.Match", "service_accounts", 11),
    ("istio.security.Match", "not_destination_ports", 10),
    ("istio.security.StringMatch", "presence", 4),
    ("istio.v1.auth.IstioCertificateRequest", "validity_duration", 3),
    ("istio.v1.auth.IstioCertificateRequest", "metadata", 4),
    ("istio.workload.zds.AddWorkload", "workload_info", 2),
    ("istio.workload.zds.DelWorkload", "uid", 2),
    ("istio.workload.zds.WorkloadRequest", "keep", 5),
    ("envoy.config.core.v3.Node", "metadata", 3),
    ("envoy.service.discovery.v3.DeltaDiscoveryRequest", "initial_resource_versions", 5),
    ("envoy.service.discovery.v3.DeltaDiscoveryRequest", "error_detail", 7),
    ("envoy.service.discovery.v3.DeltaDiscoveryResponse", "removed_resources", 6),
    ("envoy.service.discovery.v3.DeltaDiscoveryResponse", "nonce", 5),
    ("envoy.service.discovery.v3.Resource", "name", 3),
    ("envoy.service.discovery.v3.Resource", "version", 1),
    # Our own type (waypoint.proto): the contract between our control plane and waypoints.
    ("ambient.waypoint.v1.WaypointConfig", "bound_services", 3),
    ("ambient.waypoint.v1.WaypointConfig", "bound_workloads", 4),
    ("ambient.waypoint.v1.WaypointConfig", "documents", 5),
    ("ambient.waypoint.v1.WaypointConfig", "root_namespace", 6),
    ("ambient.waypoint.v1.ConfigDocument", "kind", 1),
    ("ambient.waypoint.v1.ConfigDocument", "json", 4),
]


def message(full_name: str) -> Descriptor:
    for file in FILES:
        package, _, name = full_name.rpartition(".")
        if file.package == package and name in file.message_types_by_name:
            return file.message_types_by_name[name]
    raise AssertionError(f"no message {full_name}")


@pytest.mark.parametrize(("full_name", "field", "number"), CONTRACT)
def test_field_numbers_match_istio(full_name: str, field: str, number: int) -> None:
    assert message(full_name).fields_by_name[field].number == number


class _Ads(discovery_grpc.AggregatedDiscoveryServiceBase):
    async def DeltaAggregatedResources(
        self,
        stream: Stream[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse],
    ) -> None:
        raise NotImplementedError


class _Ca(citadel_grpc.IstioCertificateServiceBase):
    async def CreateCertificate(
        self,
        stream: Stream[citadel_pb2.IstioCertificateRequest, citadel_pb2.IstioCertificateResponse],
    ) -> None:
        raise NotImplementedError


def test_grpc_paths_are_istios() -> None:
    assert list(_Ads().__mapping__()) == [
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    ]
    assert list(_Ca().__mapping__()) == ["/istio.v1.auth.IstioCertificateService/CreateCertificate"]


def test_no_message_claims_a_googleapis_symbol() -> None:
    # googleapis-common-protos (pulled in by e.g. OpenTelemetry) defines google.*; a second
    # definition of any of its symbols makes protobuf refuse to load the later module.
    assert all(not file.package.startswith("google.") for file in FILES)
