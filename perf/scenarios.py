"""The L4 paths under test. Each opens its proxy chain to a target port and yields the port
a client connects to; leaving the context stops every process of the chain."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from perf.anchors import haproxy_config, stunnel_client_config, stunnel_server_config
from perf.certs import TunnelCerts
from perf.processes import running
from perf.tools import free_port, tool_path


@dataclass(frozen=True, slots=True)
class Workspace:
    """Where a run keeps configs, certificates and logs; proxies import the harness's package."""

    directory: Path
    package_root: Path
    certs: TunnelCerts

    def write(self, name: str, text: str) -> Path:
        path = self.directory / name
        path.write_text(text)
        return path

    def ambient_fast(self, *args: str) -> list[str]:
        # The CLI of the ambient_fast the harness imported (installed wheel or in-place build).
        return [sys.executable, "-m", "ambient_fast.cli", *args]


Chain = Callable[[Workspace, int], AbstractContextManager[int]]


def _loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


@contextmanager
def direct(ws: Workspace, target: int) -> Iterator[int]:
    yield target


@contextmanager
def haproxy(ws: Workspace, target: int) -> Iterator[int]:
    port = free_port()
    config = ws.write(f"haproxy-{port}.cfg", haproxy_config(port, target))
    # -db: stay in the foreground so the harness owns (and kills) the process.
    argv = [tool_path("haproxy"), "-db", "-f", str(config)]
    with running("haproxy", argv, ws.directory, port):
        yield port


@contextmanager
def splice(ws: Workspace, target: int) -> Iterator[int]:
    port = free_port()
    argv = ws.ambient_fast("relay", "--listen", _loopback(port), "--to", _loopback(target))
    with running("splice-relay", argv, ws.directory, port, cwd=ws.package_root):
        yield port


@contextmanager
def stunnel(ws: Workspace, target: int) -> Iterator[int]:
    server_port, client_port = free_port(), free_port()
    server_cfg = ws.write(
        f"stunnel-server-{server_port}.conf",
        stunnel_server_config(server_port, target, ws.certs.server),
    )
    client_cfg = ws.write(
        f"stunnel-client-{client_port}.conf",
        stunnel_client_config(client_port, server_port, ws.certs.client),
    )
    binary = tool_path("stunnel4")
    with (
        running("stunnel-server", [binary, str(server_cfg)], ws.directory, server_port),
        running("stunnel-client", [binary, str(client_cfg)], ws.directory, client_port),
    ):
        yield client_port


def hbone_server_argv(ws: Workspace, listen: int, target: int) -> list[str]:
    files = ws.certs.server
    return ws.ambient_fast(
        "tunnel", "server",
        "--listen", _loopback(listen),
        "--cert", str(files.cert), "--key", str(files.key), "--roots", str(files.roots),
        "--allow-target", _loopback(target),
    )  # fmt: skip


def hbone_client_argv(ws: Workspace, listen: int, server: int, target: int) -> list[str]:
    files = ws.certs.client
    return ws.ambient_fast(
        "tunnel", "client",
        "--listen", _loopback(listen),
        "--server", _loopback(server),
        "--target", _loopback(target),
        "--expect-identity", ws.certs.server.identity,
        "--cert", str(files.cert), "--key", str(files.key), "--roots", str(files.roots),
    )  # fmt: skip


@contextmanager
def hbone(ws: Workspace, target: int) -> Iterator[int]:
    server_port, client_port = free_port(), free_port()
    server_argv = hbone_server_argv(ws, server_port, target)
    client_argv = hbone_client_argv(ws, client_port, server_port, target)
    with (
        running("hbone-server", server_argv, ws.directory, server_port, cwd=ws.package_root),
        running("hbone-client", client_argv, ws.directory, client_port, cwd=ws.package_root),
    ):
        yield client_port


# In report order: each proxy of ours follows the anchor it is compared with.
SCENARIOS: dict[str, Chain] = {
    "direct": direct,
    "haproxy": haproxy,
    "splice": splice,
    "stunnel": stunnel,
    "hbone": hbone,
}
