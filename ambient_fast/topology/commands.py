"""Running `ip`, `sysctl` and iptables for the topology: one place that turns a failed
command into an error naming it."""

from __future__ import annotations

import subprocess

COMMAND_TIMEOUT_S = 10.0


class TopologyError(RuntimeError):
    """A command that set up or inspected the topology failed."""


def run(*argv: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TopologyError(f"{' '.join(argv)}: {e}") from e
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [""]
        raise TopologyError(f"{' '.join(argv)}: exit {done.returncode}: {detail[0]}")
    return done.stdout


def in_netns(namespace: str, *argv: str, stdin: str | None = None) -> str:
    return run("ip", "netns", "exec", namespace, *argv, stdin=stdin)


def delete_netns(namespace: str) -> None:
    """Deletes a namespace and with it its interfaces (veth peers too), routes and rules.
    Never raises: cleanup must go on."""
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
