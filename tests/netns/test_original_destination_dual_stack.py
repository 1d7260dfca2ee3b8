"""SO_ORIGINAL_DST on a dual-stack listener: ztunnel listens on [::], so an IPv4 pod's
redirected connection arrives v4-mapped and its conntrack entry is IPv4 (found via SOL_IP)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from ambient_fast import netns
from ambient_fast.ztunnel.sockets import original_destination

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("iptables")),
    reason="needs root, iproute2 and iptables",
)

POD_IP = "10.97.0.1"
DEADLINE = 10.0


def run(*args: str) -> None:
    subprocess.run(args, capture_output=True, timeout=DEADLINE, check=True)


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
        with netns.entered_named(name):
            yield
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
