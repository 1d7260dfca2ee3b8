"""The data-path commands tune their own process (process_tuning): THP off and, where glibc's
memcpy needs it, a re-execution with the tunable; the other commands are left alone."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from installed import PACKAGE_ROOT
from waits import DEADLINE

from ambient_fast.identity.ca import MeshCA
from ambient_fast.process_tuning import glibc_version, memcpy_environment, read_cpuinfo

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def proc_status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if e)


def test_tunnel_server_runs_tuned(tmp_path: Path) -> None:
    ca = MeshCA.create()
    cert, key = ca.issue("spiffe://cluster.local/ns/t/sa/server").write(tmp_path, "server")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca.root_pem)
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    files = ["--cert", str(cert), "--key", str(key), "--roots", str(roots)]
    argv = [sys.executable, "-m", "ambient_fast.cli", "tunnel", "server", "--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*argv, *files],
        env=environ,
        cwd=PACKAGE_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + DEADLINE
        # The server logs once it serves: by then any re-execution has happened (same pid).
        line = b""
        while b"hbone tunnel server on" not in line:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([process.stdout], [], [], left)
            line = process.stdout.readline() if ready else b""
            assert line, "the tunnel server never started"
        assert proc_status(process.pid, "THP_enabled") == "0"
        expected = memcpy_environment(environ, glibc_version(), read_cpuinfo) or environ
        assert proc_environ(process.pid).get("GLIBC_TUNABLES") == expected.get("GLIBC_TUNABLES")
    finally:
        process.kill()
        process.wait()


def test_other_commands_and_callers_of_main_are_not_tuned() -> None:
    # `version` as the program, then `tunnel` through main(argv) as a test or embedder calls it.
    code = (
        "import contextlib, os; from ambient_fast.cli import main; main()\n"
        "with contextlib.suppress(SystemExit): main(['tunnel', '--help'])\n"
        "print(os.environ.get('GLIBC_TUNABLES')); print(open('/proc/self/status').read())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "version"],
        env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
        cwd=PACKAGE_ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    assert "ambient-fast" in done.stdout
    assert "\nNone\n" in done.stdout
    assert "THP_enabled:\t1" in done.stdout


def test_the_ztunnel_parser_leaves_the_control_plane_unloaded() -> None:
    code = (
        "import sys; from ambient_fast.cli import build_parser; build_parser('ztunnel')"
        ".parse_args(['ztunnel']); print(sorted(m for m in sys.modules"
        " if m.startswith('ambient_fast.controlplane')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE_ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    assert done.stdout.strip() == "[]"
