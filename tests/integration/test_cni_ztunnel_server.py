"""The node agent's ZDS server against a scripted ztunnel on a real SOCK_SEQPACKET socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from waits import wait_until

from ambient_fast.cni.ztunnel_server import PodHandoff, ZdsAckError, ZtunnelServer
from ambient_fast.xds.proto import zds_pb2

NETNS = "/proc/self/ns/net"  # any namespace file will do: the fd is what travels
POD = PodHandoff("Kubernetes//Pod/demo/client", "client", "demo", "sleep", NETNS)


class FakeZtunnel:
    """ztunnel's side, scripted: hello, then read a request (and its fds), answer an ack."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(str(path))
        self.sock.setblocking(False)

    async def hello(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString())

    async def next_request(self) -> tuple[zds_pb2.WorkloadRequest, list[int]]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.sock.fileno(), readable)
        try:
            await asyncio.wait_for(ready, 5)
        finally:
            loop.remove_reader(self.sock.fileno())
        data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
        request = zds_pb2.WorkloadRequest()
        request.ParseFromString(data)
        return request, fds

    async def ack(self, error: str = "") -> None:
        loop = asyncio.get_running_loop()
        response = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error))
        await loop.sock_sendall(self.sock, response.SerializeToString())

    async def answer(self, error: str = "") -> tuple[str, list[int]]:
        """Reads one request, closes its fds, acks; the request kind and what fds came."""
        request, fds = await self.next_request()
        for fd in fds:
            os.close(fd)
        await self.ack(error)
        return str(request.WhichOneof("payload")), fds


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ZtunnelServer]:
    server = ZtunnelServer(tmp_path / "ztunnel.sock")
    await server.start()
    yield server
    await server.close()
    assert not server.path.exists()


async def test_snapshot_on_connect_then_changes_each_acked(server: ZtunnelServer) -> None:
    server.pods[POD.uid] = POD
    ztunnel = FakeZtunnel(server.path)
    await ztunnel.hello()
    request, fds = await ztunnel.next_request()
    assert request.add.uid == POD.uid and request.add.workload_info.service_account == "sleep"
    assert len(fds) == 1 and os.stat(f"/proc/self/fd/{fds[0]}").st_ino == os.stat(NETNS).st_ino
    os.close(fds[0])
    await ztunnel.ack()
    assert await ztunnel.answer() == ("snapshot_sent", [])
    await asyncio.wait_for(server.connected.wait(), 5)

    other = PodHandoff("Kubernetes//Pod/demo/server", "server", "demo", "server", NETNS)
    added = asyncio.ensure_future(server.add(other))
    kind, fds = await ztunnel.answer()
    assert kind == "add" and len(fds) == 1
    await added
    deleted = asyncio.ensure_future(server.delete(POD.uid))
    request, fds = await ztunnel.next_request()
    assert getattr(request, "del").uid == POD.uid and fds == []
    await ztunnel.ack()
    await deleted
    assert set(server.pods) == {other.uid}


async def test_a_refusal_is_raised_naming_the_pod(server: ZtunnelServer) -> None:
    ztunnel = FakeZtunnel(server.path)
    await ztunnel.hello()
    await ztunnel.answer()  # empty snapshot
    await asyncio.wait_for(server.connected.wait(), 5)
    added = asyncio.ensure_future(server.add(POD))
    await ztunnel.answer(error="netns gone")
    with pytest.raises(ZdsAckError, match=f"add {POD.uid}: ztunnel refused: netns gone"):
        await added


async def test_ztunnel_leaving_and_coming_back_gets_the_snapshot_again(
    server: ZtunnelServer,
) -> None:
    first = FakeZtunnel(server.path)
    await first.hello()
    await first.answer()
    await asyncio.wait_for(server.connected.wait(), 5)
    first.sock.close()
    await wait_until(lambda: not server.connected.is_set(), "the server to see ztunnel leave")
    server.pods[POD.uid] = POD  # learned while ztunnel was away
    second = FakeZtunnel(server.path)
    await second.hello()
    assert (await second.answer())[0] == "add"
    assert (await second.answer())[0] == "snapshot_sent"
    await asyncio.wait_for(server.connected.wait(), 5)


async def test_garbage_instead_of_hello_drops_only_that_connection(server: ZtunnelServer) -> None:
    liar = FakeZtunnel(server.path)
    await asyncio.get_running_loop().sock_sendall(liar.sock, b"\xff\xff\xff")
    honest = FakeZtunnel(server.path)
    await honest.hello()
    assert (await honest.answer())[0] == "snapshot_sent"
    await asyncio.wait_for(server.connected.wait(), 5)
