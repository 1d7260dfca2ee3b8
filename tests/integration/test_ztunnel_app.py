"""The whole node proxy in-process on loopback: LOCAL_XDS_PATH (ztunnel's YAML) and FAKE_CA,
ports shifted to free ones. Readiness flips from 503 to 200 when the file appears, /config_dump
lists the file's workloads, an HBONE tunnel through the inbound listener reaches an echo, the
metrics show it, /quitquitquit drains and `run()` returns 0. Root: the inbound dialer marks its
sockets and binds the client's IP (IP_TRANSPARENT)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hbone_harness import echo_backend, finish, recv_exactly, recv_to_eof, sendall
from installed import PACKAGE_ROOT
from sockets import free_ports, tcp_pair
from waits import DEADLINE, wait_until

from ambient_fast.cli import build_parser, main
from ambient_fast.hbone import HboneClient, HboneRoute, TlsIdentity
from ambient_fast.identity.ca import MeshCA
from ambient_fast.ztunnel.app import Ztunnel
from ambient_fast.ztunnel.config import PORTS, from_args

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ztunnel" / "localhost.yaml"
LOCAL_IP = "127.0.0.1"  # the fixture's HBONE workload "local" (default/local, sa default)
LOCAL_ID = "spiffe://cluster.local/ns/default/sa/default"
CLIENT_ID = "spiffe://cluster.local/ns/apps/sa/client"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="marks and IP_TRANSPARENT need root")


async def http(port: int, method: str, target: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(LOCAL_IP, port)
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def status_of(port: int, target: str) -> int | None:
    try:
        return (await http(port, "GET", target))[0]
    except OSError:
        return None


def config_args(local_xds: Path) -> list[str]:
    ports = free_ports(len(PORTS))
    args = [
        "ztunnel",
        "--proxy-mode=dedicated",
        "--proxy-workload-info=default/local/default",
        "--fake-ca=true",
        f"--local-xds-path={local_xds}",
        "--drain-deadline=5s",
    ]
    args += [f"--{name.replace('_', '-')}={port}" for name, port in zip(PORTS, ports, strict=True)]
    return args


@needs_root
async def test_the_proxy_serves_drains_and_exits(tmp_path: Path) -> None:
    local_xds = tmp_path / "local.yaml"  # written later: readiness must wait for it
    config = from_args(build_parser().parse_args(config_args(local_xds)), {})
    app = Ztunnel(config, bind=LOCAL_IP)
    running = asyncio.create_task(app.run())
    client = HboneClient()
    try:
        await wait_until(lambda: app.self_signed is not None, "the self-signed CA")
        ready_port = config.readiness_port
        statuses: list[int | None] = []

        async def poll_status() -> None:
            statuses.append(await status_of(ready_port, "/healthz/ready"))

        while not statuses or statuses[-1] is None:
            await poll_status()
            assert not running.done(), running
        assert statuses[-1] == 503  # listeners may be up, but no config yet

        shutil.copy(FIXTURE, local_xds)
        for _ in range(int(DEADLINE / 0.05)):
            await poll_status()
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200, statuses[-5:]

        status, body = await http(config.admin_port, "GET", "/config_dump")
        assert status == 200
        dump = json.loads(body)
        assert set(dump) >= {"workloads", "services", "policies", "certificates"}
        assert {w["uid"] for w in dump["workloads"]} == {
            "cluster1//v1/Pod/default/local",
            "cluster1//v1/Pod/default/local-tcp",
        }
        assert {s["hostname"] for s in dump["services"]} == {"example.com", "example2.com"}
        assert [p["name"] for p in dump["policies"]] == ["deny-9999"]
        [cert] = dump["certificates"]
        assert (cert["identity"], cert["state"]) == (LOCAL_ID, "Available")

        assert app.self_signed is not None
        ca = MeshCA.load(app.self_signed.roots_pem, app.self_signed.key_pem)
        issued = ca.issue(CLIENT_ID)
        async with echo_backend(LOCAL_IP) as (_, echo_port):
            route = HboneRoute(
                f"{LOCAL_IP}:{config.inbound_port}",
                TlsIdentity(issued.chain_pem, issued.key_pem, ca.root_pem),
                (LOCAL_ID,),
                f"{LOCAL_IP}:{echo_port}",
            )
            tunnel = await client.open(route, [])
            app_side, far = tcp_pair()
            with app_side:
                pumping = asyncio.create_task(tunnel.pump(far))
                try:
                    payload = os.urandom(64 * 1024)
                    await sendall(app_side, payload)
                    assert await recv_exactly(app_side, len(payload)) == payload
                    # Open, it is in the dump istioctl's connections view reads.
                    dump = json.loads((await http(config.admin_port, "GET", "/config_dump"))[1])
                    [state] = dump["workloadState"].values()
                    assert state["info"]["name"] == "local"
                    assert state["connections"]["inbound"] == [
                        {"src": state["connections"]["inbound"][0]["src"], "originalDst": None,
                         "actualDst": f"{LOCAL_IP}:{echo_port}", "protocol": "HBONE"}
                    ]  # fmt: skip
                    app_side.shutdown(socket.SHUT_WR)
                    assert await recv_to_eof(app_side) == b""
                    await asyncio.wait_for(pumping, DEADLINE)
                finally:
                    await finish(pumping)

        status, body = await http(config.stats_port, "GET", "/metrics")
        assert status == 200
        opened = [
            line
            for line in body.decode().splitlines()
            if line.startswith("istio_tcp_connections_opened_total{")
        ]
        # The fixture's workloads carry no workloadName: the labels say who by principal.
        expected = (
            'reporter="destination"',
            f'source_principal="{CLIENT_ID}"',
            f'destination_principal="{LOCAL_ID}"',
        )
        assert any(all(e in line for e in expected) for line in opened), opened

        assert (await http(config.admin_port, "POST", "/quitquitquit"))[0] == 200
        assert await asyncio.wait_for(running, DEADLINE) == 0
        assert await status_of(ready_port, "/healthz/ready") is None  # everything closed
    finally:
        client.close()
        if not running.done():
            app.stop()
            await asyncio.gather(running, return_exceptions=True)


async def test_logging_levels_change_over_admin(tmp_path: Path) -> None:
    local_xds = tmp_path / "local.yaml"
    shutil.copy(FIXTURE, local_xds)
    config = from_args(build_parser().parse_args(config_args(local_xds)), {})
    app = Ztunnel(config, bind=LOCAL_IP)
    running = asyncio.create_task(app.run())
    logger = logging.getLogger("ambient_fast.xds")
    old = logger.level
    try:
        await wait_until(app.ready, "readiness")
        status, body = await http(config.admin_port, "POST", "/logging?level=xds:debug")
        assert status == 200
        assert b"xds: debug" in body
        status, body = await http(config.admin_port, "POST", "/logging?level=loud")
        assert status == 400 and b"loud" in body
        assert (await http(config.admin_port, "GET", "/quitquitquit"))[0] == 405
    finally:
        logger.setLevel(old)
        app.stop()
        assert await asyncio.wait_for(running, DEADLINE) == 0


def test_help_lists_settings_with_their_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ztunnel", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for variable in ("XDS_ADDRESS", "LOCAL_XDS_PATH", "PROXY_MODE", "FAKE_CA", "LOG_FORMAT"):
        assert f"env {variable}" in text


async def test_the_command_reads_the_environment_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    env = {
        **os.environ,
        "PROXY_MODE": "dedicated",
        "PROXY_WORKLOAD_INFO": "default/local/default",
        "FAKE_CA": "true",
        "LOCAL_XDS": FIXTURE.read_text(),
        "LOG_FORMAT": "json",
    }
    flags = [f"--{name.replace('_', '-')}={port}" for name, port in ports.items()]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ambient_fast.cli",
        "ztunnel",
        "--drain-deadline=1s",
        *flags,
        env=env,
        cwd=PACKAGE_ROOT,  # import the ambient_fast under test, not the checkout's sources
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(int(DEADLINE / 0.05)):
            if await status_of(ports["readiness_port"], "/healthz/ready") == 200:
                break
            assert process.returncode is None
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the command never became ready")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert any("draining" in line.get("message", "") for line in lines), stdout.decode()


def test_the_node_proxy_does_not_load_cryptography() -> None:
    """The control plane's X.509 library costs a node proxy ~8 MiB of RSS; it has its own."""
    probe = "import sys, ambient_fast.cli, ambient_fast.ztunnel.app\n"
    probe += "print('cryptography' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PACKAGE_ROOT
    )
    assert out.stdout.strip() == "False"
