"""Process-wide settings of the long-running data-path commands (`ztunnel`, `tunnel`).

`tune_data_path_process` runs first thing in `ambient-fast ztunnel|tunnel`, before the native
modules load:

- **memcpy without `rep movsb` on AMD (glibc before 2.39).** On AMD Zen 3/4, `rep movsb` runs
  about 25x slower when the destination is 1..15 bytes past the source modulo 4096 (glibc bug
  30994; 3.5 instead of 90 GB/s measured on this project's machines). glibc 2.36 uses it for
  copies from 2 KiB up, and rustls copies every plaintext record to its buffer at exactly that
  distance (+5 for the record header, +9 for the HTTP/2 frame header, from our page-aligned
  read buffers): a quarter of the outbound proxy's CPU. glibc 2.39 stopped preferring
  `rep movsb` on these CPUs; older ones get the same through GLIBC_TUNABLES, which only the
  dynamic loader reads, so the process re-executes itself once with it set.
- **No transparent huge pages** (PR_SET_THP_DISABLE, kept across exec). With THP `always`,
  one touched byte of an idle heap (mimalloc's eagerly committed arena, malloc arenas) costs
  2 MiB of RSS: 6 MiB of an idle ztunnel's. The proxy's buffers are small and reused; it
  gains nothing from huge pages.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

# prctl(2): PR_SET_THP_DISABLE from linux/prctl.h.
PR_SET_THP_DISABLE = 41
MEMCPY_TUNABLE = "glibc.cpu.x86_rep_movsb_threshold"
# SIZE_MAX: never `rep movsb`; copies above the non-temporal threshold still stream.
_NEVER = str(2**64 - 1)
_FIXED_GLIBC = (2, 39)


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc; None on another C library."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    except (ValueError, OSError):
        return None
    major, _, minor = version.partition(".")
    if name != "glibc" or not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def slow_rep_movsb_cpu(cpuinfo: str) -> bool:
    """An AMD CPU whose glibc memcpy uses `rep movsb` (ERMS), from /proc/cpuinfo's text."""
    vendor = flags = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id":
            vendor = value.strip()
        elif key == "flags":
            flags = value
        if vendor and flags:
            break
    return vendor == "AuthenticAMD" and "erms" in flags.split()


def memcpy_environment(
    environ: Mapping[str, str], glibc: tuple[int, int] | None, cpuinfo: Callable[[], str]
) -> dict[str, str] | None:
    """The environment to re-execute with, or None when memcpy is fine as it is (another libc,
    glibc 2.39 or later, the tunable already set, or a CPU without the slow `rep movsb`)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if glibc is None or glibc >= _FIXED_GLIBC or MEMCPY_TUNABLE in tunables:
        return None
    if not slow_rep_movsb_cpu(cpuinfo()):
        return None
    setting = f"{MEMCPY_TUNABLE}={_NEVER}"
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{setting}" if tunables else setting}


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def tune_data_path_process() -> None:
    """Disables THP for this process; re-executes it (same argv) when memcpy needs the tunable.
    Returns only when no re-execution was needed."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
    environment = memcpy_environment(os.environ, glibc_version(), read_cpuinfo)
    if environment is not None and sys.executable:
        os.execve(sys.executable, sys.orig_argv, environment)
