"""Which pods of this node are in the mesh (sans-IO).

The control plane has already applied istio-cni's enablement rules (`istio.io/dataplane-mode`
on the pod, else on its namespace; never a sidecar-injected pod) when it set a workload's
tunnel protocol to HBONE (`translate/workloads.is_captured`); the agent follows that decision
for the pods on its node. Host-network pods share the node's namespace and are never captured.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ambient_fast.state.model import NetworkMode, TunnelProtocol, Workload, WorkloadType


@dataclass(frozen=True, slots=True)
class Enrolment:
    uid: str
    name: str
    namespace: str
    service_account: str
    ip: str  # the pod's IPv4 address, which is how its namespace is found


def enrolled_pods(workloads: Iterable[Workload], node: str) -> dict[str, Enrolment]:
    """The captured pods running on `node`, by workload uid."""
    pods = {}
    for workload in workloads:
        if (
            workload.node != node
            or workload.workload_type is not WorkloadType.POD
            or workload.protocol is not TunnelProtocol.HBONE
            or workload.network_mode is not NetworkMode.STANDARD
        ):
            continue
        ipv4 = [ip for ip in workload.ips if isinstance(ip, ipaddress.IPv4Address)]
        if not ipv4:
            continue
        pods[workload.uid] = Enrolment(
            workload.uid, workload.name, workload.namespace, workload.service_account,
            str(ipv4[0]),
        )  # fmt: skip
    return pods
