"""Commands in a pod's network namespace, and reference 04's policy route there (`ip rule`
fwmark 0x111 -> table 100, `local 0.0.0.0/0 dev lo`), which both capture modes install: it
delivers packets marked as redirected to the pod's own sockets whatever their destination.

Commands run with `nsenter --net=<netns path>`, so any namespace file works (a named netns
under /run/netns, or /proc/<pid>/ns/net).
"""

from __future__ import annotations

from ambient_fast.cni.rules import LOCAL_ROUTE_TABLE, PolicyRoute
from ambient_fast.commands import run_command

_ROUTE = PolicyRoute()
_LOOKUP = f"lookup {LOCAL_ROUTE_TABLE}"


class CaptureError(RuntimeError):
    """Capture could not be installed or removed; the message names the namespace and step."""


def run_in(netns_path: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
    return run_command(
        ["nsenter", f"--net={netns_path}", *argv], stdin=stdin, check=check,
        error=CaptureError, label=f"{netns_path}: {' '.join(argv[:2])}",
    )  # fmt: skip


def add(netns_path: str) -> None:
    # `replace` is idempotent for the route; the rule is added only once.
    run_in(netns_path, "ip", "route", "replace", *_ROUTE.route)
    if _LOOKUP not in run_in(netns_path, "ip", "rule", "show"):
        run_in(netns_path, "ip", "rule", "add", *_ROUTE.rule)


def present(netns_path: str) -> bool:
    """Both the rule and the route are there."""
    if _LOOKUP not in run_in(netns_path, "ip", "rule", "show"):
        return False
    return "local default dev lo" in run_in(
        netns_path, "ip", "route", "show", "table", str(LOCAL_ROUTE_TABLE), check=False
    )


def remove(netns_path: str) -> None:
    """Takes the rule (every copy) and the table's routes out; what is gone is skipped."""
    while _LOOKUP in run_in(netns_path, "ip", "rule", "show"):
        run_in(netns_path, "ip", "rule", "del", *_ROUTE.rule)
    run_in(netns_path, "ip", "route", "flush", "table", str(LOCAL_ROUTE_TABLE), check=False)
