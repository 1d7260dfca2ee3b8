"""Validation of workload-API resources: every refusal names the resource and the field."""

from __future__ import annotations

import ipaddress

import pytest

from ambient_fast.state.convert import (
    InvalidResource,
    address_from_proto,
    service_from_proto,
    workload_from_proto,
)
from ambient_fast.state.model import (
    GatewayAddress,
    LoadBalancingMode,
    NamespacedHostname,
    NetworkAddress,
    TunnelProtocol,
    Workload,
)
from ambient_fast.xds.proto import workload_pb2 as wpb


def test_a_full_workload_converts_with_ztunnel_defaults() -> None:
    w = workload_from_proto(
        wpb.Workload(
            uid="Kubernetes//Pod/apps/echo",
            name="echo",
            namespace="apps",
            addresses=[ipaddress.ip_address("10.1.0.1").packed],
            tunnel_protocol=wpb.HBONE,
            waypoint=wpb.GatewayAddress(
                hostname=wpb.NamespacedHostname(namespace="apps", hostname="wp.apps")
            ),
            network_gateway=wpb.GatewayAddress(
                address=wpb.NetworkAddress(network="n2", address=bytes(16)), hbone_mtls_port=15009
            ),
            services={"apps/echo.apps": wpb.PortList(ports=[wpb.Port(service_port=80)])},
        )
    )
    assert isinstance(w, Workload)
    assert w.captured and w.protocol is TunnelProtocol.HBONE
    assert str(w.identity) == "spiffe://cluster.local/ns/apps/sa/default"
    assert w.cluster_id == "Kubernetes" and w.capacity == 1 and w.healthy
    assert w.waypoint == GatewayAddress(NamespacedHostname("apps", "wp.apps"), 15008)
    assert w.network_gateway == GatewayAddress(
        NetworkAddress("n2", ipaddress.ip_address("::")), 15009
    )
    assert w.services == {"apps/echo.apps": {80: 0}}


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        (wpb.Workload(name="x", namespace="apps"), "workload apps/x: uid is required"),
        (wpb.Workload(uid="u", addresses=[b"\x01\x02"]), "workload u: addresses[0]: 2 bytes"),
        (
            wpb.Workload(uid="u", services={"no-slash": wpb.PortList()}),
            "workload u: services key: 'no-slash' is not <namespace>/<hostname>",
        ),
        (
            wpb.Workload(
                uid="u",
                services={"a/b": wpb.PortList(ports=[wpb.Port(service_port=70000)])},
            ),
            "workload u: services['a/b'].ports[0].service_port: port 70000 out of range",
        ),
        (
            wpb.Workload(uid="u", tunnel_protocol=wpb.TunnelProtocol.ValueType(9)),
            "workload u: tunnel_protocol: unknown value 9",
        ),
        (
            wpb.Workload(uid="u", waypoint=wpb.GatewayAddress()),
            "workload u: waypoint: neither hostname nor address set",
        ),
        (
            wpb.Workload(
                uid="u",
                waypoint=wpb.GatewayAddress(address=wpb.NetworkAddress(address=b"\x01")),
            ),
            "workload u: waypoint.address: 1 bytes",
        ),
    ],
)
def test_invalid_workloads_name_the_field(workload: wpb.Workload, message: str) -> None:
    with pytest.raises(InvalidResource, match=message.replace("[", r"\[").replace("]", r"\]")):
        workload_from_proto(workload)


def test_services_convert_and_fail_by_field() -> None:
    s = service_from_proto(
        wpb.Service(
            name="echo",
            namespace="apps",
            hostname="echo.apps",
            addresses=[wpb.NetworkAddress(address=ipaddress.ip_address("10.96.0.1").packed)],
            ports=[wpb.Port(service_port=80, target_port=8080, app_protocol=wpb.HTTP2)],
            load_balancing=wpb.LoadBalancing(
                mode=wpb.LoadBalancing.FAILOVER, routing_preference=[wpb.LoadBalancing.ZONE]
            ),
        )
    )
    assert s.key == "apps/echo.apps" and s.ports[80].target_port == 8080
    assert s.load_balancing is not None and s.load_balancing.mode is LoadBalancingMode.FAILOVER
    with pytest.raises(InvalidResource, match="namespace and hostname are required"):
        service_from_proto(wpb.Service(name="x", hostname="x.apps"))
    with pytest.raises(InvalidResource, match=r"service a/h: addresses\[0\]: 5 bytes"):
        service_from_proto(
            wpb.Service(
                namespace="a", hostname="h", addresses=[wpb.NetworkAddress(address=b"12345")]
            )
        )
    with pytest.raises(InvalidResource, match=r"routing_preference\[0\]: unspecified scope"):
        service_from_proto(
            wpb.Service(
                namespace="a",
                hostname="h",
                load_balancing=wpb.LoadBalancing(
                    routing_preference=[wpb.LoadBalancing.UNSPECIFIED_SCOPE]
                ),
            )
        )
    with pytest.raises(InvalidResource, match="resource name 'a/other' differs"):
        address_from_proto("a/other", wpb.Address(service=wpb.Service(namespace="a", hostname="h")))
