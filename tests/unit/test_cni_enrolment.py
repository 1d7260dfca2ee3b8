"""Which pods the node agent captures: the control plane's HBONE decision, on this node."""

from __future__ import annotations

import ipaddress

from ambient_fast.cni.enrolment import Enrolment, enrolled_pods
from ambient_fast.state.model import NetworkMode, TunnelProtocol, Workload, WorkloadType


def pod(name: str, **changes: object) -> Workload:
    fields: dict[str, object] = {
        "uid": f"Kubernetes//Pod/demo/{name}",
        "name": name,
        "namespace": "demo",
        "ips": (ipaddress.ip_address("10.244.1.10"),),
        "protocol": TunnelProtocol.HBONE,
        "service_account": name,
        "node": "node-a",
        "workload_type": WorkloadType.POD,
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


def test_captured_pods_of_this_node_are_enrolled() -> None:
    assert enrolled_pods([pod("client")], "node-a") == {
        "Kubernetes//Pod/demo/client": Enrolment(
            "Kubernetes//Pod/demo/client", "client", "demo", "client", "10.244.1.10"
        )
    }


def test_other_nodes_plain_pods_host_network_and_non_pods_are_not() -> None:
    workloads = [
        pod("elsewhere", node="node-b"),
        pod("plain", protocol=TunnelProtocol.NONE),
        pod("host", network_mode=NetworkMode.HOST_NETWORK),
        pod("vm", workload_type=WorkloadType.DEPLOYMENT),
        pod("v6only", ips=(ipaddress.ip_address("fd00::5"),)),
    ]
    assert enrolled_pods(workloads, "node-a") == {}


def test_the_ipv4_address_is_the_one_used_for_a_dual_stack_pod() -> None:
    dual = pod("dual", ips=(ipaddress.ip_address("fd00::5"), ipaddress.ip_address("10.244.1.7")))
    assert enrolled_pods([dual], "node-a")[dual.uid].ip == "10.244.1.7"
