"""ztunnel in shared (in-pod) mode on two nodes, against our control plane, in namespaces
(`two_nodes.py`: the control plane in the fabric, a ztunnel and an `ambient-fast cni` agent per
node with the node's token). Each test is a row of reference 03's traffic paths, the DNS proxy
under the agents' DNS capture (iptables modes), or one of issue 4's operations; they share one
mesh and run in file order (drain last).
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from cluster_dns import ClusterDns, resolve
from fake_waypoint import FakeWaypoint, Seen
from mesh_harness import IO_TIMEOUT, ask, dial, exchange, metric_total
from two_nodes import (
    CAPTURE_MODES,
    ECHO_PORT,
    ECHO_VIP,
    NOBODY_VIP,
    OUTSIDE_PORT,
    PODS,
    PROPAGATION_S,
    TRUST,
    WAYPOINT_BOUND_VIP,
    Mesh,
    running_mesh,
    write_config,
)

from ambient_fast.cni.rules import DEFAULT_PROBE_SOURCE
from ambient_fast.topology.commands import run
from ambient_fast.ztunnel.dns.message import FLAG_AA, Rcode, name_from_text


@pytest.fixture(scope="module", params=sorted(CAPTURE_MODES))
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """The whole suite once per capture mechanism of the node agents (issue 5)."""
    capture = request.param
    work = tmp_path_factory.mktemp(f"two-nodes-{capture}")
    # DNS capture where the agent can (iptables; eBPF capture leaves DNS alone).
    with running_mesh(work, capture=capture, capture_dns=capture != "ebpf") as mesh:
        yield mesh


# -- traffic paths (reference 03) --------------------------------------------------------


def test_service_vip_reaches_a_pod_on_the_other_node_over_hbone(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "client", ECHO_VIP, 80)
    assert (reply.hostname, reply.port) == ("server", ECHO_PORT)
    assert reply.ip == PODS["client"].ip  # the source survives the tunnel
    principals = {
        "source_principal": f"{TRUST}/client",
        "destination_principal": f"{TRUST}/server",
        "connection_security_policy": "mutual_tls",
    }
    assert metric_total(mesh.metrics("node-a"), "istio_tcp_connections_opened_total",
                        reporter="source", **principals) >= 1  # fmt: skip
    assert metric_total(mesh.metrics("node-b"), "istio_tcp_connections_opened_total",
                        reporter="destination", destination_workload="server",
                        **principals) >= 1  # fmt: skip


@pytest.fixture(scope="module")
def waypoint(mesh: Mesh) -> Iterator[FakeWaypoint]:
    routes = {
        f"{WAYPOINT_BOUND_VIP}:80": (PODS["server"].ip, ECHO_PORT),
        f"{PODS['guarded'].ip}:{ECHO_PORT}": (PODS["guarded"].ip, ECHO_PORT),
    }
    state = mesh.work / "controlplane"
    fake = FakeWaypoint(mesh.topology, "waypoint", f"{TRUST}/waypoint", state, routes)
    try:
        yield fake
    finally:
        fake.close()


def test_a_service_bound_to_a_waypoint_goes_through_it(mesh: Mesh, waypoint: FakeWaypoint) -> None:
    """Row 1: HBONE to the waypoint, :authority = the service VIP and port."""
    reply = ask(mesh.topology, "client", WAYPOINT_BOUND_VIP, 80)
    assert reply.hostname == "server"
    assert Seen(f"{WAYPOINT_BOUND_VIP}:80", f"{TRUST}/client") in waypoint.seen


def test_a_pod_with_a_workload_waypoint_is_reached_through_it(
    mesh: Mesh, waypoint: FakeWaypoint
) -> None:
    """Row 3: pod-addressed traffic to a pod bound to a waypoint goes to the waypoint, with
    :authority = pod IP and target port."""
    guarded = PODS["guarded"].ip
    reply = ask(mesh.topology, "client", guarded, ECHO_PORT)
    assert reply.hostname == "guarded"
    assert Seen(f"{guarded}:{ECHO_PORT}", f"{TRUST}/client") in waypoint.seen


def test_same_node_pod_traffic_takes_the_same_path(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "client", PODS["neighbour"].ip, ECHO_PORT)
    assert (reply.hostname, reply.ip) == ("neighbour", PODS["client"].ip)
    assert metric_total(mesh.metrics("node-a"), "istio_tcp_connections_opened_total",
                        reporter="destination", destination_workload="neighbour",
                        source_principal=f"{TRUST}/client") >= 1  # fmt: skip


def test_an_uncaptured_destination_gets_plain_tcp(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "client", PODS["plain"].ip, ECHO_PORT)
    assert (reply.hostname, reply.ip) == ("plain", PODS["client"].ip)


def test_an_unknown_destination_is_passed_through(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "client", mesh.topology.fabric_ip, OUTSIDE_PORT)
    assert (reply.hostname, reply.ip) == ("outside", PODS["client"].ip)


def test_a_service_without_endpoints_is_refused(mesh: Mesh) -> None:
    with pytest.raises(OSError):
        ask(mesh.topology, "client", NOBODY_VIP, 80)


def test_a_plaintext_client_reaches_a_captured_pod_by_default(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "outsider", PODS["server"].ip, ECHO_PORT)
    assert (reply.hostname, reply.ip) == ("server", PODS["outsider"].ip)
    # ztunnel never reports `none`: plaintext is `unknown` (metrics/labels.py).
    opened = metric_total(
        mesh.metrics("node-b"), "istio_tcp_connections_opened_total", reporter="destination",
        source_workload="outsider", connection_security_policy="unknown",
    )  # fmt: skip
    assert opened >= 1


def test_the_kubelet_probe_source_reaches_a_captured_pod_directly(mesh: Mesh) -> None:
    """Probes (istio-cni SNATs the kubelet's to 169.254.7.127 on the node) are not captured:
    the pod answers them itself, and its reply leaves the pod."""
    node = mesh.topology.nodes["node-b"].netns
    from_unknown = {"reporter": "destination", "destination_workload": "server",
                    "source_workload": "unknown"}  # fmt: skip
    before = metric_total(mesh.metrics("node-b"), "istio_tcp_connections_opened_total",
                          **from_unknown)  # fmt: skip
    run("ip", "-n", node, "addr", "add", f"{DEFAULT_PROBE_SOURCE}/32", "dev", "lo")
    try:
        with mesh.topology.entered(node):
            probe = socket.create_connection(
                (PODS["server"].ip, ECHO_PORT), IO_TIMEOUT, (DEFAULT_PROBE_SOURCE, 0)
            )
        with probe:
            reply = exchange(probe)
        assert (reply.hostname, reply.ip) == ("server", DEFAULT_PROBE_SOURCE)
    finally:
        run("ip", "-n", node, "addr", "del", f"{DEFAULT_PROBE_SOURCE}/32", "dev", "lo")
    # Through ztunnel it would have been counted before the echo could answer.
    after = metric_total(mesh.metrics("node-b"), "istio_tcp_connections_opened_total",
                         **from_unknown)  # fmt: skip
    assert after == before


@pytest.mark.parametrize("port", [15001, 15006, 15008])
def test_connections_to_the_proxy_ports_themselves_are_refused(mesh: Mesh, port: int) -> None:
    """A pod dialling its own proxy's port directly would loop."""
    with pytest.raises(OSError):
        ask(mesh.topology, "client", PODS["client"].ip, port)


# -- DNS: the pods' queries captured to their ztunnel's DNS proxy ----------------------------

OUTSIDE_NAME, OUTSIDE_NAME_IP = "outside.test", "192.0.2.7"


@pytest.fixture(scope="module")
def cluster_dns(mesh: Mesh) -> Iterator[ClusterDns]:
    """The cluster's DNS in the fabric: the pods' and nodes' nameserver. It knows one name
    outside the mesh and none of the mesh's services."""
    if not mesh.options.capture_dns:
        pytest.skip("eBPF capture leaves DNS alone (the agent's --capture-dns needs iptables)")
    dns = ClusterDns(mesh.topology, {OUTSIDE_NAME: OUTSIDE_NAME_IP})
    try:
        yield dns
    finally:
        dns.close()


def test_a_captured_pod_resolves_services_through_its_ztunnel(
    mesh: Mesh, cluster_dns: ClusterDns
) -> None:
    for name in ("echo", "echo.demo", "echo.demo.svc.cluster.local"):
        answer = resolve(mesh.topology, "client", name)
        assert (answer.header.rcode, answer.header.flags & FLAG_AA) == (Rcode.NOERROR, FLAG_AA)
        assert [(r.name, r.data) for r in answer.answers] == [
            (name_from_text(name), ipaddress.IPv4Address(ECHO_VIP))
        ], name
    over_tcp = resolve(mesh.topology, "client", "echo.demo", tcp=True)
    assert [r.data for r in over_tcp.answers] == [ipaddress.IPv4Address(ECHO_VIP)]
    # Answered in the pod by its ztunnel: none reached the cluster's DNS.
    assert not [asked for _, asked in cluster_dns.seen if asked.startswith("echo")]
    assert metric_total(mesh.metrics("node-a"), "istio_dns_requests_total",
                        request_protocol="udp", source_canonical_service="client") >= 3  # fmt: skip


def test_other_names_are_forwarded_from_the_pod_to_the_cluster_dns(
    mesh: Mesh, cluster_dns: ClusterDns
) -> None:
    answer = resolve(mesh.topology, "client", OUTSIDE_NAME)
    assert answer.header.rcode == Rcode.NOERROR and not answer.header.flags & FLAG_AA
    assert [r.data for r in answer.answers] == [ipaddress.IPv4Address(OUTSIDE_NAME_IP)]
    # The forwarded query left from the pod's namespace (its IP), marked, so not captured again.
    assert (PODS["client"].ip, OUTSIDE_NAME) in cluster_dns.seen
    assert metric_total(mesh.metrics("node-a"), "istio_dns_upstream_requests_total",
                        source_canonical_service="client") >= 1  # fmt: skip


def test_an_uncaptured_pod_asks_the_cluster_dns_itself(mesh: Mesh, cluster_dns: ClusterDns) -> None:
    answer = resolve(mesh.topology, "outsider", "echo")
    assert answer.header.rcode == Rcode.NXDOMAIN
    assert (PODS["outsider"].ip, "echo") in cluster_dns.seen


# -- access log ----------------------------------------------------------------------------


def test_access_log_names_both_ends(mesh: Mesh) -> None:
    ask(mesh.topology, "client", ECHO_VIP, 80)

    def logged() -> bool:
        return any(
            "connection complete" in line and 'direction="inbound"' in line
            and f'src.identity="{TRUST}/client"' in line and 'dst.workload="server"' in line
            for line in mesh.ztunnels["node-b"].log.read_text().splitlines()
        )  # fmt: skip

    mesh.ztunnels["node-b"].wait_for("an inbound access log line", logged)


# -- istioctl ztunnel-config connections ------------------------------------------------------


def pod_connections(mesh: Mesh, node: str, pod: str) -> dict[str, list[dict[str, str | None]]]:
    """The pod's `connections` in its node's /config_dump `workloadState`."""
    states = mesh.config_dump(node)["workloadState"].values()
    [state] = [s for s in states if s["info"]["name"] == pod]
    assert state["state"] == "Up"
    connections: dict[str, list[dict[str, str | None]]] = state["connections"]
    return connections


def test_config_dump_lists_open_connections_on_both_nodes(mesh: Mesh) -> None:
    server = PODS["server"].ip
    held = dial(mesh.topology, "client", ECHO_VIP, 80)
    with held:
        assert exchange(held).hostname == "server"
        src = "{}:{}".format(*held.getsockname())
        outbound = pod_connections(mesh, "node-a", "client")["outbound"]
        assert {"src": src, "originalDst": f"{ECHO_VIP}:80", "actualDst": f"{server}:15008",
                "protocol": "HBONE"} in outbound  # fmt: skip
        [inbound] = [
            c for c in pod_connections(mesh, "node-b", "server")["inbound"]
            if c["actualDst"] == f"{server}:{ECHO_PORT}"
        ]  # fmt: skip
        assert inbound["protocol"] == "HBONE" and inbound["originalDst"] is None
        assert str(inbound["src"]).startswith(f"{PODS['client'].ip}:")
    mesh.ztunnels["node-a"].wait_for(
        "the closed connection to leave the dump",
        lambda: all(c["src"] != src for c in pod_connections(mesh, "node-a", "client")["outbound"]),
    )


# -- policy ---------------------------------------------------------------------------------

ALLOW_CLIENT_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-allow, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
"""
STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"""


def eventually_refused(mesh: Mesh, pod: str) -> None:
    end = time.monotonic() + PROPAGATION_S
    while True:
        try:
            ask(mesh.topology, pod, PODS["server"].ip, ECHO_PORT)
        except OSError:
            return
        assert time.monotonic() < end, f"{pod} still reaches the server"
        time.sleep(0.1)


def test_allow_policy_admits_its_principal_only_and_cuts_live_connections(mesh: Mesh) -> None:
    held = dial(mesh.topology, "neighbour", PODS["server"].ip, ECHO_PORT)
    with held:
        assert exchange(held).hostname == "server"
        write_config(mesh, "policies.yaml", ALLOW_CLIENT_ONLY)
        try:
            eventually_refused(mesh, "neighbour")
            eventually_refused(mesh, "outsider")  # plaintext: no identity to match
            assert ask(mesh.topology, "client", ECHO_VIP, 80).hostname == "server"
            # The connection opened before the policy is closed once the policy arrives.
            with pytest.raises(OSError):
                for _ in range(int(PROPAGATION_S * 10)):
                    exchange(held)
                    time.sleep(0.1)
        finally:
            write_config(mesh, "policies.yaml", "# no policies\n")
    mesh.ztunnels["node-b"].wait_for(
        "the policy's removal", lambda: ask(mesh.topology, "neighbour", ECHO_VIP, 80) is not None
    )


def test_strict_peer_authentication_refuses_plaintext_only(mesh: Mesh) -> None:
    write_config(mesh, "policies.yaml", STRICT)
    try:
        eventually_refused(mesh, "outsider")
        assert ask(mesh.topology, "client", ECHO_VIP, 80).hostname == "server"
    finally:
        write_config(mesh, "policies.yaml", "# no policies\n")
    mesh.ztunnels["node-b"].wait_for(
        "STRICT's removal",
        lambda: ask(mesh.topology, "outsider", PODS["server"].ip, ECHO_PORT) is not None,
    )


# -- operations -----------------------------------------------------------------------------


def test_control_plane_away_for_30s_keeps_known_destinations_working(mesh: Mesh) -> None:
    topology = mesh.topology
    held = dial(topology, "client", ECHO_VIP, 80)
    with held:
        exchange(held)
        assert mesh.controlplane[-1].stop() == 0
        end = time.monotonic() + 30
        while time.monotonic() < end:
            exchange(held)
            assert ask(topology, "client", ECHO_VIP, 80).hostname == "server"
            time.sleep(1)
        again = mesh.start_controlplane("controlplane-again")
        again.wait_logged("xds: stream resumed")  # a ztunnel echoing its resource versions
        exchange(held)
        assert ask(topology, "client", ECHO_VIP, 80).hostname == "server"


def test_drain_lets_an_open_connection_finish_and_refuses_new_ones(mesh: Mesh) -> None:
    held = dial(mesh.topology, "client", ECHO_VIP, 80)
    with held:
        exchange(held)
        ztunnel = mesh.ztunnels["node-a"]
        ztunnel.popen.send_signal(signal.SIGTERM)
        exchange(held)  # still served while draining
        ztunnel.popen.wait(30)
    with pytest.raises(OSError):
        ask(mesh.topology, "client", ECHO_VIP, 80)
