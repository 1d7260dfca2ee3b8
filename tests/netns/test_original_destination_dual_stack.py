"""SO_ORIGINAL_DST on a dual-stack listener: ztunnel listens on [::], so an IPv4 pod's
redirected connection arrives v4-mapped and its conntrack entry is IPv4 (found via SOL_IP)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from ambient_fast.ztunnel.sockets import original_destination

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("iptables")),
    reason="needs root, iproute2 and iptables",
)

POD_IP = "10.97.0.1"
DEADLINE = 10.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run(*args: str) -> None:
    subprocess.run(args, capture_output=True, timeout=DEADLINE, check=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def redirected_namespace(to_port: int) -> Iterator[None]:
    """This thread in a fresh netns whose TCP egress to POD_IP:9999 is REDIRECTed to `to_port`."""
    name = f"af-odst-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "addr", "add", f"{POD_IP}/32", "dev", "lo")
        rule = f"-p tcp -d {POD_IP} --dport 9999 -j REDIRECT --to-ports {to_port}"
        run("ip", "netns", "exec", name, "iptables", "-t", "nat", "-A", "OUTPUT", *rule.split())
        with (
            open("/proc/thread-self/ns/net", "rb") as home,
            open(f"/run/netns/{name}", "rb") as ns,
        ):
            _setns(ns.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.mark.parametrize("listen", ["::", "0.0.0.0"])
def test_the_original_ipv4_destination_is_read_on_either_listener(listen: str) -> None:
    with redirected_namespace(15001):
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((listen, 15001))
            listener.listen()
            with socket.create_connection((POD_IP, 9999), DEADLINE):
                accepted, _ = listener.accept()
                with accepted:
                    assert original_destination(accepted) == (POD_IP, 9999)
