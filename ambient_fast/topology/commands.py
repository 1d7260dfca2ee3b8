"""Running `ip`, `sysctl` and iptables for the topology, failures as `TopologyError`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ambient_fast.commands import run_command


class TopologyError(RuntimeError):
    """A command that set up or inspected the topology failed."""


def run(*argv: str, stdin: str | None = None) -> str:
    return run_command(argv, stdin=stdin, error=TopologyError)


def in_netns(namespace: str, *argv: str, stdin: str | None = None) -> str:
    return run("ip", "netns", "exec", namespace, *argv, stdin=stdin)


# `ip netns exec NAME` shows /etc/netns/NAME/<file> as /etc/<file> (resolv.conf, hosts).
NETNS_ETC_DIR = Path("/etc/netns")


def delete_netns(namespace: str) -> None:
    """Deletes a namespace and with it its interfaces (veth peers too), routes, rules and
    /etc/netns files. Never raises: cleanup must go on."""
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
    shutil.rmtree(NETNS_ETC_DIR / namespace, ignore_errors=True)
