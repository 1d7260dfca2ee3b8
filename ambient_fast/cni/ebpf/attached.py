"""What of the capture is attached in the calling thread's network namespace, read back from
the kernel: the state lives on the pod's devices, nowhere else.

The programs are attached to the pod's devices with BPF_PROG_ATTACH (tcx), so the devices hold
them (and the programs their maps) without any process or pin: the capture outlives the agent,
and goes with the namespace. BPF_PROG_QUERY on each device finds them again, by their kernel
names, and their maps by the programs' map ids. So a restarted agent and the node proxy (to
register its listeners) find the same objects whatever their mount namespace; a bpffs pin is
visible only where that bpffs is mounted, and `ip netns exec` gives each process its own /sys.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from ambient_fast.bpf import syscall
from ambient_fast.cni.ebpf.programs import EGRESS_PROGRAM, INGRESS_PROGRAM, LOOPBACK_IFINDEX

OUR_PROGRAMS = (EGRESS_PROGRAM, INGRESS_PROGRAM)
HOOKS = (syscall.AttachType.TCX_INGRESS, syscall.AttachType.TCX_EGRESS)


@dataclass(frozen=True, slots=True)
class Hook:
    """Where one of our programs goes: a device's ingress or egress."""

    program: str
    ifindex: int
    direction: syscall.AttachType


def interfaces() -> tuple[int, ...]:
    """The ifindexes of the namespace's devices but loopback."""
    return tuple(index for index, _ in socket.if_nameindex() if index != LOOPBACK_IFINDEX)


def wanted_hooks() -> tuple[Hook, ...]:
    """A complete capture: ingress on loopback and on every device, egress on every device."""
    hooks = [Hook(INGRESS_PROGRAM, LOOPBACK_IFINDEX, syscall.AttachType.TCX_INGRESS)]
    for ifindex in interfaces():
        hooks.append(Hook(EGRESS_PROGRAM, ifindex, syscall.AttachType.TCX_EGRESS))
        hooks.append(Hook(INGRESS_PROGRAM, ifindex, syscall.AttachType.TCX_INGRESS))
    return tuple(hooks)


@contextlib.contextmanager
def opened(open_fd: int) -> Iterator[int]:
    """An fd from `prog_fd_by_id` / `map_fd_by_id`, closed on exit."""
    try:
        yield open_fd
    finally:
        os.close(open_fd)


@dataclass(slots=True)
class Attached:
    """Our programs on the namespace's devices (program ids per hook) and their maps (ids by
    name)."""

    programs: dict[Hook, list[int]] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)

    def hooks(self) -> set[Hook]:
        return set(self.programs)


def find() -> Attached:
    """Reads our programs and maps back from the devices of the calling thread's namespace."""
    found = Attached()
    for ifindex in (LOOPBACK_IFINDEX, *interfaces()):
        for direction in HOOKS:
            for prog_id in syscall.prog_query(ifindex, direction):
                with opened(syscall.prog_fd_by_id(prog_id)) as prog:
                    info = syscall.prog_info(prog)
                if info.name not in OUR_PROGRAMS:
                    continue  # someone else's: left alone
                found.programs.setdefault(Hook(info.name, ifindex, direction), []).append(prog_id)
                for map_id in info.map_ids:
                    with opened(syscall.map_fd_by_id(map_id)) as bpf_map:
                        found.maps.setdefault(syscall.map_info(bpf_map).name, map_id)
    return found


def detach(hook: Hook, prog_id: int) -> None:
    with opened(syscall.prog_fd_by_id(prog_id)) as prog:
        syscall.prog_detach(hook.ifindex, prog, hook.direction)
