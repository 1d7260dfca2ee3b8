"""`ambient-fast perf`: finds the source checkout and runs its `perf` package.

The benchmarks need iperf3, HAProxy, stunnel and sockperf and are not shipped in the wheel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOT_A_CHECKOUT = "run from a source checkout; perf/ is not shipped in the wheel"


def find_checkout(start: Path) -> Path | None:
    """The nearest directory at or above `start` holding both pyproject.toml and perf/."""
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file() and (directory / "perf/__init__.py").is_file():
            return directory
    return None


def run_perf(args: argparse.Namespace) -> int:
    checkout = find_checkout(Path.cwd().resolve())
    if checkout is None:
        print(
            f"ambient-fast perf: {NOT_A_CHECKOUT} (searched up from {Path.cwd()})", file=sys.stderr
        )
        return 2
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    if args.suite == "python-cpu":
        from perf import cpu_profile

        return cpu_profile.main(["--seconds", str(args.duration)])
    if args.suite == "controlplane":
        from perf import controlplane

        return controlplane.run(args.json)
    if args.suite == "cni":
        from perf import cni

        return cni.run(args.duration, args.json)
    if args.suite == "ztunnel":
        from perf import ztunnel_pair

        return ztunnel_pair.run(args.duration, args.json)
    from perf import l4

    return l4.run(args.duration, args.json)
