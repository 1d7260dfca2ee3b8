"""When the data-path commands re-execute with the memcpy tunable (process_tuning)."""

from __future__ import annotations

import pytest

from ambient_fast.process_tuning import (
    MEMCPY_TUNABLE,
    glibc_version,
    memcpy_environment,
    slow_rep_movsb_cpu,
)

AMD = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu erms fsrm\n"
)
INTEL = AMD.replace("AuthenticAMD", "GenuineIntel")
AMD_NO_ERMS = AMD.replace(" erms", "")


def test_amd_with_erms_is_the_slow_case() -> None:
    assert slow_rep_movsb_cpu(AMD)
    assert not slow_rep_movsb_cpu(INTEL)
    assert not slow_rep_movsb_cpu(AMD_NO_ERMS)
    assert not slow_rep_movsb_cpu("")


def test_old_glibc_on_amd_gets_the_tunable_next_to_the_existing_ones() -> None:
    env = memcpy_environment({"PATH": "/bin"}, (2, 36), lambda: AMD)
    assert env is not None
    assert env["PATH"] == "/bin"
    assert env["GLIBC_TUNABLES"] == f"{MEMCPY_TUNABLE}={2**64 - 1}"
    env = memcpy_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 38), lambda: AMD)
    assert env is not None
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{MEMCPY_TUNABLE}={2**64 - 1}"


@pytest.mark.parametrize(
    ("environ", "glibc", "cpu"),
    [
        ({}, (2, 39), AMD),  # glibc fixed it
        ({}, (3, 0), AMD),
        ({}, None, AMD),  # musl and friends
        ({}, (2, 36), INTEL),
        ({}, (2, 36), AMD_NO_ERMS),
        ({"GLIBC_TUNABLES": f"{MEMCPY_TUNABLE}=8192"}, (2, 36), AMD),  # the operator decided
    ],
)
def test_nothing_to_do(environ: dict[str, str], glibc: tuple[int, int] | None, cpu: str) -> None:
    assert memcpy_environment(environ, glibc, lambda: cpu) is None


def test_cpuinfo_is_read_only_when_glibc_needs_it() -> None:
    def unread() -> str:
        raise AssertionError("read /proc/cpuinfo")

    assert memcpy_environment({}, (2, 40), unread) is None


def test_running_glibc_version() -> None:
    version = glibc_version()
    assert version is None or (version[0] == 2 and version[1] > 20)
