"""Running a system command (`ip`, `iptables`, `sysctl`, `nsenter`) for the node agent and the
topology builder: a failure becomes one error naming the command (or what the caller calls it)
and the command's last line of stderr."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

COMMAND_TIMEOUT_S = 10.0


def run_command(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    check: bool = True,
    error: type[Exception] = RuntimeError,
    label: str | None = None,
) -> str:
    """The command's stdout. Raises `error` when it cannot start, times out or (with `check`)
    exits non-zero; the message starts with `label` (default: the whole command line)."""
    what = label if label is not None else " ".join(argv)
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise error(f"{what}: {e}") from e
    if check and done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [""])[-1]
        raise error(f"{what}: exit {done.returncode}: {detail}")
    return done.stdout
