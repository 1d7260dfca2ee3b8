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

Commands run in the namespace with `policy_route.run_in` (nsenter).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ambient_fast.cni import policy_route
from ambient_fast.cni.policy_route import CaptureError, run_in
from ambient_fast.cni.rules import (
    OUTPUT_CHAIN,
    PRERT_CHAIN,
    CaptureConfig,
    Ruleset,
    capture_rulesets,
)


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
            present = _present_jumps(run_in(netns_path, "iptables-save"))
            rulesets = capture_rulesets(self.config)
            run_in(netns_path, "iptables-restore", "--noflush",
                   stdin=_restore_text(rulesets, present))  # fmt: skip
            policy_route.add(netns_path)
        except CaptureError:
            self.remove(netns_path)
            raise

    def remove(self, netns_path: str) -> None:
        """Takes out everything `install` adds, DNS capture's too (whatever this agent's
        setting: an earlier one may have installed it); what is already gone is skipped."""
        saved = run_in(netns_path, "iptables-save")
        present = _present_jumps(saved)
        for ruleset in capture_rulesets(replace(self.config, capture_dns=True)):
            for jump in ruleset.jumps:
                if (ruleset.table, jump) in present:
                    run_in(netns_path, "iptables", "-t", ruleset.table, "-D", *jump.split())
            for chain in ruleset.chains:
                if f":{chain} " in _table_section(saved, ruleset.table):
                    run_in(netns_path, "iptables", "-t", ruleset.table, "-F", chain)
                    run_in(netns_path, "iptables", "-t", ruleset.table, "-X", chain)
        policy_route.remove(netns_path)

    def is_installed(self, netns_path: str) -> bool:
        saved = run_in(netns_path, "iptables-save")
        return any(f":{chain} " in saved for chain in (PRERT_CHAIN, OUTPUT_CHAIN))


def _table_section(saved: str, table: str) -> str:
    if f"*{table}\n" not in saved:
        return ""
    return saved.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
