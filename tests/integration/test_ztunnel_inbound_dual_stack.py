"""ztunnel's inbound HBONE listener on [::] (as `ambient-fast ztunnel` binds it) accepting an
IPv4 client: the certificate, the policy check and the transparent source use the plain IPv4
addresses, not their ::ffff: mapped form."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest
from hbone_harness import finish, recv_exactly, sendall
from sockets import tcp_pair
from test_ztunnel_inbound_listeners import (
    CLIENT_ID,
    CLIENT_IP,
    ECHO_ID,
    ECHO_IP,
    apply,
    echo_backend,
    pod,
    tls_identity,
    uid,
)
from waits import DEADLINE, wait_until

from ambient_fast.hbone import HboneClient, HboneRoute
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.issuer import SelfSignedCa
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics import Metrics
from ambient_fast.state import StateStore
from ambient_fast.ztunnel.inbound import InboundServer
from ambient_fast.ztunnel.sockets import PROXY_MARK, UpstreamDialer, listening_socket

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="marks and IP_TRANSPARENT need root")


async def test_an_ipv4_client_on_a_dual_stack_listener_reaches_the_pod() -> None:
    ca = MeshCA.create()
    store = StateStore()
    apply(store, pod("client", CLIENT_IP), pod("echo", ECHO_IP))
    async with contextlib.AsyncExitStack() as cleanup:
        manager = await cleanup.enter_async_context(
            CertificateManager(SelfSignedCa.from_pem(ca.root_pem, ca.key_pem), ca.root_pem)
        )
        backend = await cleanup.enter_async_context(echo_backend(ECHO_IP))
        server = InboundServer(
            listening_socket(("::", 0)),
            store,
            manager,
            {uid("echo")},
            Metrics(process=False),
            dialer=UpstreamDialer(mark=PROXY_MARK, transparent=True),
        )
        server.start()
        cleanup.push_async_callback(server.close, DEADLINE)
        client = HboneClient()
        cleanup.callback(client.close)
        await wait_until(lambda: ECHO_IP in server.certificates.ips(), "the echo certificate")
        route = HboneRoute(
            f"{ECHO_IP}:{server.address[1]}",
            tls_identity(ca, CLIENT_ID),
            (ECHO_ID,),
            f"{ECHO_IP}:{backend.port}",
            source_ip=CLIENT_IP,
        )
        tunnel = await client.open(route, [])
        app, far = tcp_pair()
        cleanup.callback(app.close)
        pumping = asyncio.create_task(tunnel.pump(far))
        cleanup.push_async_callback(finish, pumping)
        payload = os.urandom(64 * 1024)
        await sendall(app, payload)
        assert await recv_exactly(app, len(payload)) == payload
        app.shutdown(socket.SHUT_WR)
        # The pod saw the client's IPv4 address (IP_TRANSPARENT bind of the unmapped peer).
        assert [peer[0] for peer in backend.peers] == [CLIENT_IP]
