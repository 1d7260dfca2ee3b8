"""A stand-in waypoint for the traffic-path tests: an HBONE server (our HboneServer) in the
waypoint pod with the waypoint's certificate from the mesh root, recording each CONNECT's
authority and peer identity and forwarding it to the pod the test says. L7 processing is the
waypoint issue's; here only what ztunnel sends to a waypoint is under test."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import uvloop

from ambient_fast import _native
from ambient_fast.hbone import Accept, HboneServer, InboundTunnel, Reject
from ambient_fast.identity.ca import MeshCA
from ambient_fast.topology import Topology

HBONE_PORT = 15008
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Seen:
    authority: str
    peer_identity: str


class FakeWaypoint:
    def __init__(
        self, topology: Topology, pod: str, identity: str, state_dir: Path,
        routes: Mapping[str, tuple[str, int]],
    ) -> None:  # fmt: skip
        """`routes`: CONNECT authority -> where to send it (others get 503)."""
        self.seen: list[Seen] = []
        self._routes = dict(routes)
        ca = MeshCA.load(
            (state_dir / "root-cert.pem").read_bytes(), (state_dir / "root-key.pem").read_bytes()
        )
        cert = ca.issue(identity)
        self._certs = _native.ServerCertificates()
        self._certs.set(None, _native.TlsIdentity(cert.chain_pem, cert.key_pem, cert.roots_pem))
        self._netns = topology.pods[pod].netns
        self._ip = topology.pods[pod].ip
        self._topology = topology
        self._loop = uvloop.new_event_loop()
        self._server: HboneServer | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake waypoint", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError("fake waypoint did not start")

    def _run(self) -> None:
        # The whole thread lives in the waypoint pod: every socket it opens is the pod's.
        with self._topology.entered(self._netns):
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        listener = socket.create_server((self._ip, HBONE_PORT))
        self._server = HboneServer(listener, self._certs, self._decide)
        self._started.set()
        await self._server.serve()

    async def _decide(self, tunnel: InboundTunnel) -> Accept | Reject:
        authority = str(tunnel.target)
        self.seen.append(Seen(authority, tunnel.peer_identity))
        target = self._routes.get(authority)
        if target is None:
            return Reject(503, f"no route for {authority} in the fake waypoint")
        loop = asyncio.get_running_loop()
        upstream = socket.socket()
        upstream.setblocking(False)
        await loop.sock_connect(upstream, target)
        return Accept(upstream)

    def close(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.drain)
        self._thread.join(START_TIMEOUT_S)
