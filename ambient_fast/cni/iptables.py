"""iptables capture for one pod: istio-cni's in-pod rules (`rules.py`) applied inside the
pod's network namespace, and taken out again.

- **Atomic.** One `iptables-restore --noflush` carries every table's part (iptables-nft makes it
  one nftables transaction), then the policy route. If any step fails, whatever was applied
  is removed before the error is raised: a pod is fully captured or not at all.
- **Idempotent.** Declaring our chains in the restore flushes them, and a jump is added only
  when the namespace does not have it yet, so a second install (an agent restart) leaves one
  copy of each rule.
- **Complete removal.** Our jumps, our chains, the `ip rule` and the table-100 route go; the
  pod's other rules are untouched.

Commands run with `nsenter --net=<netns path>`, so any namespace file works (a named netns
under /run/netns, or /proc/<pid>/ns/net).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from ambient_fast.cni.rules import (
    LOCAL_ROUTE_TABLE,
    OUTPUT_CHAIN,
    PRERT_CHAIN,
    CaptureConfig,
    PolicyRoute,
    Ruleset,
    capture_rulesets,
)

COMMAND_TIMEOUT_S = 10.0


class CaptureError(RuntimeError):
    """Capture could not be installed or removed; the message names the namespace and step."""


def _run(netns_path: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
    command = ["nsenter", f"--net={netns_path}", *argv]
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CaptureError(f"{netns_path}: {' '.join(argv[:2])}: {e}") from e
    if check and done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [""])[-1]
        raise CaptureError(f"{netns_path}: {' '.join(argv[:2])} exit {done.returncode}: {detail}")
    return done.stdout


def _present_jumps(saved: str) -> set[tuple[str, str]]:
    """(table, "CHAIN -j TARGET") for every rule of `iptables-save` output."""
    present = set()
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            present.add((table, line[3:]))
    return present


def _restore_text(rulesets: tuple[Ruleset, ...], present: set[tuple[str, str]]) -> str:
    parts = []
    for ruleset in rulesets:
        missing = tuple(j for j in ruleset.jumps if (ruleset.table, j) not in present)
        parts.append(Ruleset(ruleset.table, ruleset.chains, missing, ruleset.rules).restore_text())
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class IptablesCapture:
    config: CaptureConfig = field(default_factory=CaptureConfig)

    def install(self, netns_path: str, pod_ip: str) -> None:
        """Captures the pod's traffic (`pod_ip` is not needed by iptables: the rules match
        on marks and interfaces)."""
        try:
            present = _present_jumps(_run(netns_path, "iptables-save"))
            rulesets = capture_rulesets(self.config)
            _run(netns_path, "iptables-restore", "--noflush",
                 stdin=_restore_text(rulesets, present))  # fmt: skip
            self._add_policy_route(netns_path)
        except CaptureError:
            self.remove(netns_path)
            raise

    def _add_policy_route(self, netns_path: str) -> None:
        route = PolicyRoute()
        # `replace` is idempotent for the route; the rule is added only once.
        _run(netns_path, "ip", "route", "replace", *route.route)
        if f"lookup {LOCAL_ROUTE_TABLE}" not in _run(netns_path, "ip", "rule", "show"):
            _run(netns_path, "ip", "rule", "add", *route.rule)

    def remove(self, netns_path: str) -> None:
        """Takes out everything `install` adds; what is already gone is skipped."""
        saved = _run(netns_path, "iptables-save")
        present = _present_jumps(saved)
        for ruleset in capture_rulesets(self.config):
            for jump in ruleset.jumps:
                if (ruleset.table, jump) in present:
                    _run(netns_path, "iptables", "-t", ruleset.table, "-D", *jump.split())
            for chain in ruleset.chains:
                if f":{chain} " in _table_section(saved, ruleset.table):
                    _run(netns_path, "iptables", "-t", ruleset.table, "-F", chain)
                    _run(netns_path, "iptables", "-t", ruleset.table, "-X", chain)
        route = PolicyRoute()
        while f"lookup {LOCAL_ROUTE_TABLE}" in _run(netns_path, "ip", "rule", "show"):
            _run(netns_path, "ip", "rule", "del", *route.rule)
        _run(netns_path, "ip", "route", "flush", "table", str(LOCAL_ROUTE_TABLE), check=False)

    def is_installed(self, netns_path: str) -> bool:
        saved = _run(netns_path, "iptables-save")
        return any(f":{chain} " in saved for chain in (PRERT_CHAIN, OUTPUT_CHAIN))


def _table_section(saved: str, table: str) -> str:
    if f"*{table}\n" not in saved:
        return ""
    return saved.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
