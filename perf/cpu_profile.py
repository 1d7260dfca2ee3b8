"""`python -m perf.cpu_profile`: how much of a proxy's CPU goes to the Python interpreter.

Runs a bulk iperf3 transfer through the HBONE pair (or the splice relay) and samples each
proxy process with `perf record` (all threads, kernel included). The share of samples in
libpython is the interpreter's share of that proxy's CPU; the goal is under 5%.
py-spy cannot give this number: it only sees threads that hold a Python thread state, so the
native pump threads would be missing from its denominator.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ambient_fast
from perf.backends import iperf3_server
from perf.certs import write_tunnel_certs
from perf.measure import iperf3_argv
from perf.processes import ManagedProcess
from perf.scenarios import SCENARIOS, Workspace
from perf.tools import REQUIRED_TOOLS, PerfError, ToolError, ensure_tools, run_tool, tool_path

INTERPRETER_GOAL_PERCENT = 5.0
# Skip iperf3's first second (TCP slow start, connection setup) before sampling.
_RAMP_UP_S = 1.0
_SAMPLE_HZ = 999  # not a multiple of common timer rates, so samples do not alias with them
# A row of `perf report --stdio --show-nr-samples --sort dso`: "  97.10%  4851  [kernel.kallsyms]"
_DSO_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\d+)\s+(\S.*?)\s*$")


@dataclass(frozen=True, slots=True)
class CpuProfile:
    process: str
    samples: int
    by_dso: dict[str, float]  # shared object -> percent of the process's samples

    @property
    def interpreter_percent(self) -> float:
        # libpython3.X.so for a shared build, the python3.X binary for a static one.
        return sum(p for dso, p in self.by_dso.items() if re.match(r"(lib)?python3", dso))

    @property
    def interpreter_percent_of_user(self) -> float:
        """The interpreter's share of user-space time only. Bulk copies are mostly kernel time,
        so even a per-chunk Python pump can look small against all samples; this one shows it."""
        user = sum(p for dso, p in self.by_dso.items() if not dso.startswith("[kernel"))
        return 100.0 * self.interpreter_percent / user if user else 0.0


def parse_perf_report(process: str, text: str) -> CpuProfile:
    samples, by_dso = 0, {}
    for line in text.splitlines():
        if not line.startswith("#") and (found := _DSO_LINE.match(line)):
            by_dso[found.group(3)] = float(found.group(1))
            samples += int(found.group(2))
    if samples == 0:
        raise ToolError("perf", f"no samples of {process}", text)
    return CpuProfile(process, samples, by_dso)


def proxy_pids(parent: int) -> dict[str, int]:
    """Our proxy children (python -m ambient_fast.cli ...) of `parent`, by their subcommand."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"ambient_fast.cli" in argv:
            words = [w.decode() for w in argv[argv.index(b"ambient_fast.cli") + 1 :][:2]]
            found[" ".join(w for w in words if not w.startswith("-"))] = int(entry.name)
    return found


def _record(pids: dict[str, int], seconds: float, out_dir: Path) -> None:
    """Samples every pid for `seconds` with one `perf record` each, all at the same time."""
    recorders = []
    try:
        for pid in pids.values():
            argv = [tool_path("perf"), "record", "-q", "-e", "cpu-clock", "-F", str(_SAMPLE_HZ)]
            argv += [
                "-p",
                str(pid),
                "-o",
                str(out_dir / f"{pid}.data"),
                "--",
                "sleep",
                str(seconds),
            ]
            recorders.append(ManagedProcess(f"perf-{pid}", argv, out_dir / f"perf-{pid}.log", None))
        for recorder in recorders:
            code = recorder.popen.wait(seconds + 30)
            if code != 0:
                raise ToolError("perf", f"record exited {code}", recorder.log_tail())
    finally:
        for recorder in recorders:
            recorder.stop()


def _py_spy_dumps(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        dump = run_tool("py-spy", ["dump", "--native", "--pid", str(pid)], 30, check=False)
        print(f"--- py-spy dump of {name} (pid {pid}) ---\n{dump.stdout}{dump.stderr}")


def profile(scenario: str, seconds: float, out_dir: Path, py_spy_dump: bool) -> list[CpuProfile]:
    package_root = Path(ambient_fast.__file__).resolve().parents[1]
    ws = Workspace(out_dir, package_root, write_tunnel_certs(out_dir))
    transfer_s = int(seconds + 2 * _RAMP_UP_S)
    with iperf3_server(out_dir) as backend, SCENARIOS[scenario](ws, backend) as port:
        pids = proxy_pids(os.getpid())
        if not pids:
            raise PerfError(f"{scenario}: no ambient_fast proxy process found to profile")
        iperf3 = [tool_path("iperf3"), *iperf3_argv(port, 1, transfer_s)]
        client = ManagedProcess("iperf3-client", iperf3, out_dir / "iperf3-client.log", None)
        try:
            time.sleep(_RAMP_UP_S)
            if py_spy_dump:
                _py_spy_dumps(pids)
            _record(pids, seconds, out_dir)
        finally:
            client.stop()
    reports = []
    for name, pid in pids.items():
        argv = ["report", "-i", str(out_dir / f"{pid}.data"), "--stdio", "--no-children", "-n"]
        done = run_tool("perf", [*argv, "--sort", "dso"], 120)
        reports.append(parse_perf_report(name, done.stdout))
    return reports


def render(reports: list[CpuProfile], scenario: str, seconds: float) -> str:
    lines = [f"CPU of the {scenario} proxies during a {seconds:.0f} s single-stream iperf3 upload"]
    for r in reports:
        verdict = "yes" if r.interpreter_percent < INTERPRETER_GOAL_PERCENT else "NO"
        lines.append(
            f"  {r.process}: {r.interpreter_percent:.1f}% of {r.samples} samples in the"
            f" interpreter (goal < {INTERPRETER_GOAL_PERCENT:.0f}%: {verdict});"
            f" {r.interpreter_percent_of_user:.1f}% of its user-space samples"
        )
        top = sorted(r.by_dso.items(), key=lambda item: -item[1])[:6]
        lines += [f"      {percent:6.2f}%  {dso}" for dso, percent in top]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.cpu_profile", description=__doc__)
    parser.add_argument("--scenario", choices=["hbone", "splice"], default="hbone")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--keep", metavar="DIR", help="keep perf.data files and logs in DIR")
    parser.add_argument("--py-spy-dump", action="store_true", help="also dump Python stacks")
    args = parser.parse_args(argv)
    try:
        ensure_tools({"iperf3": REQUIRED_TOOLS["iperf3"], "perf": "linux-perf"})
        if args.py_spy_dump:
            tool_path("py-spy")
        if args.keep:
            out_dir = Path(args.keep)
            out_dir.mkdir(parents=True, exist_ok=True)
            reports = profile(args.scenario, args.seconds, out_dir, args.py_spy_dump)
        else:
            with tempfile.TemporaryDirectory(prefix="ambient-fast-profile-") as tmp:
                reports = profile(args.scenario, args.seconds, Path(tmp), args.py_spy_dump)
    except PerfError as exc:
        print(f"cpu_profile: {exc}", file=sys.stderr)
        return 1
    print(render(reports, args.scenario, args.seconds))
    worst = max(r.interpreter_percent for r in reports)
    return 0 if worst < INTERPRETER_GOAL_PERCENT else 1


if __name__ == "__main__":
    sys.exit(main())
