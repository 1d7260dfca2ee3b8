"""Real redirection: a pod network namespace whose egress a nat REDIRECT sends to the outbound
listener, with istio-cni's exemption for packets marked 0x539 (reference 04).

The test's thread enters the namespace (setns) while it runs, so every socket the loop opens
(listener, client, upstream) lives there; the namespace and its rules go away even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from access_events import AccessEvents

from ambient_fast import netns
from ambient_fast.hbone import HboneClient
from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.spiffe import Identity
from ambient_fast.metrics import ConnectionMetrics
from ambient_fast.splice import SpliceRelay
from ambient_fast.state import StateStore
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL
from ambient_fast.ztunnel.accesslog import AccessLog
from ambient_fast.ztunnel.outbound import OutboundProxy
from ambient_fast.ztunnel.sockets import PROXY_MARK

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("iptables-restore")),
    reason="needs root, iproute2 and iptables",
)

DEADLINE = 10.0
CLIENT_IP = "10.99.0.1"  # the `sleep` pod
SERVER_IP = "10.99.0.2"  # somewhere outside the mesh


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=DEADLINE, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def pod_namespace() -> Iterator[str]:
    """A fresh netns with lo up and both pod addresses on it; deleted on exit."""
    name = f"af-outbound-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        for ip in (CLIENT_IP, SERVER_IP):
            run("ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "lo")
        yield name
    finally:
        # Its iptables rules live and die with the namespace.
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def redirect_rules(proxy_port: int) -> str:
    """The nat half of istio-cni's in-pod rules: pod TCP egress to the outbound port, except
    the proxy's own marked connections."""
    return "\n".join(
        [
            "*nat",
            ":ISTIO_OUTPUT - [0:0]",
            "-A OUTPUT -j ISTIO_OUTPUT",
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {PROXY_MARK:#x}/0xfff "
            f"-j REDIRECT --to-ports {proxy_port}",
            "COMMIT",
            "",
        ]
    )


def apply_rules(namespace: str, rules: str) -> None:
    """One iptables-restore transaction, as istio-cni applies its rules."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "iptables-restore", "--noflush"],
        input=rules,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, f"iptables-restore: {done.stderr.strip()}\n{rules}"


def redirected_packets(namespace: str) -> int:
    nat = ("iptables", "-t", "nat", "-L", "ISTIO_OUTPUT", "-v", "-x", "-n")
    listing = run("ip", "netns", "exec", namespace, *nat)
    [line] = [line for line in listing.splitlines() if "REDIRECT" in line]
    match = re.match(r"\s*(\d+)", line)
    assert match is not None, line
    return int(match.group(1))


class NoCertificates:
    async def certificate(self, identity: Identity) -> VerifiedCertificate:
        raise AssertionError(f"a passthrough needs no certificate ({identity})")


@contextlib.asynccontextmanager
async def echo_server(host: str) -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_redirect_reaches_the_original_destination_and_the_mark_is_not_redirected() -> None:
    store = StateStore()
    sleep = wpb.Workload(
        uid="Kubernetes//Pod/apps/sleep",
        name="sleep",
        namespace="apps",
        addresses=[ipaddress.ip_address(CLIENT_IP).packed],
        tunnel_protocol=wpb.HBONE,
        service_account="sleep",
        workload_name="sleep",
        canonical_name="sleep",
    )
    assert not store.apply(ADDRESS_TYPE_URL, {sleep.uid: wpb.Address(workload=sleep)}).rejected
    events = AccessEvents()
    logger = logging.getLogger(f"test.netns.outbound.{id(events)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(events)
    payload = os.urandom(256 * 1024)
    loop = asyncio.get_running_loop()
    with pod_namespace() as namespace, netns.entered_named(namespace):
        listener = socket.create_server(("0.0.0.0", 0))
        relay = SpliceRelay()
        hbone = HboneClient()
        metrics = ConnectionMetrics()
        proxy = OutboundProxy(
            listener, store, NoCertificates(), hbone, relay, metrics, AccessLog(logger)
        )
        serving = asyncio.create_task(proxy.serve())
        try:
            apply_rules(namespace, redirect_rules(proxy.address[1]))
            async with echo_server(SERVER_IP) as port:
                client = socket.socket()
                client.setblocking(False)
                client.bind((CLIENT_IP, 0))
                with client:
                    await asyncio.wait_for(loop.sock_connect(client, (SERVER_IP, port)), DEADLINE)
                    await asyncio.wait_for(loop.sock_sendall(client, payload), DEADLINE)
                    client.shutdown(socket.SHUT_WR)
                    echoed = bytearray()
                    while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), DEADLINE):
                        echoed += chunk
                assert echoed == payload
                deadline = loop.time() + DEADLINE
                while not events.lines():
                    assert loop.time() < deadline, "no access log line"
                    await asyncio.sleep(0.005)
        finally:
            await proxy.drain(0)
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            relay.close()
            hbone.close()
            logger.removeHandler(events)
        # One redirect: the client's SYN. The proxy's marked upstream SYN went out as it was.
        assert redirected_packets(namespace) == 1
    [line] = events.lines()
    assert line["dst.addr"] == f"{SERVER_IP}:{port}"
    assert line["src.workload"] == "sleep"
    assert (line["bytes_sent"], line["bytes_recv"]) == (len(payload), len(payload))
