"""One pod's eBPF capture, the agent's `Capture`: install, check, remove.

A captured pod has, all inside its own network namespace:
- the `ingress` program on the ingress of loopback and of every other device, the `egress`
  program on the egress of every device but loopback (tcx, held by the devices: `attached`),
  and their two maps: `af_settings` (probe source, HBONE port, pod IP) and `af_listeners`
  (the SOCKMAP the node proxy fills);
- reference 04's policy route (`policy_route`), and accept_local on lo: the packets `egress`
  turns around arrive on lo from the pod's own address, which the martian-source check
  refuses without it (it matters for nothing else: other packets on lo carry their route).

`install` converges on that state, reusing what is already right (above all the listener map
the proxy may have filled) and attaching the programs last, and on any failure removes
everything: a pod is captured fully or not at all. Nothing is kept outside the namespace, so
nothing outlives it. Calls block (bpf(2), commands, /proc/sys) with the calling thread inside
the pod's namespace for their duration: run them off the event loop, as the agent does.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

from ambient_fast import netns
from ambient_fast.bpf import syscall
from ambient_fast.bpf.insn import assemble
from ambient_fast.cni import policy_route
from ambient_fast.cni.ebpf import attached, programs
from ambient_fast.cni.ebpf.attached import Attached
from ambient_fast.cni.rules import CaptureConfig

PROGRAM_LICENSE = "Apache-2.0"
ACCEPT_LOCAL = "/proc/sys/net/ipv4/conf/lo/accept_local"
REQUIREMENTS = (
    "Linux 6.6+ (tcx; bpf_sk_assign of SO_REUSEPORT listeners) with CAP_BPF, CAP_NET_ADMIN "
    "and CAP_SYS_ADMIN"
)
DEFAULT_CONFIG = CaptureConfig()
_SETTINGS_KEY = struct.pack("<I", 0)


class EbpfUnavailable(RuntimeError):
    """This kernel or process cannot run the capture programs; iptables mode can."""


@contextlib.contextmanager
def _kernel_support(what: str) -> Iterator[None]:
    """A refusal by the kernel as EbpfUnavailable, naming the step, the reason (with the
    verifier's log) and the way out."""
    try:
        yield
    except syscall.BpfError as e:
        raise EbpfUnavailable(
            f"eBPF capture unavailable: {what}: {e} (needs {REQUIREMENTS}); use --redirect=iptables"
        ) from e


def _accept_local() -> int:
    with open(ACCEPT_LOCAL, encoding="ascii") as setting:
        return int(setting.read())


def _set_accept_local(value: int) -> None:
    with open(ACCEPT_LOCAL, "w", encoding="ascii") as setting:
        setting.write(f"{value}\n")


@contextlib.contextmanager
def _inside(netns_path: str) -> Iterator[None]:
    """The calling thread in the namespace at `netns_path` until exit; FileNotFoundError
    when there is none."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netns.entered(fd):
            yield
    finally:
        os.close(fd)


def _settings(settings_map: int) -> programs.Settings:
    raw = syscall.map_lookup(settings_map, _SETTINGS_KEY, programs.SETTINGS_SIZE)
    assert raw is not None, "an array map always has index 0"
    return programs.Settings.decode(raw)


def _create_map(name: str) -> int:
    with _kernel_support(f"creating map {name}"):
        if name == programs.SETTINGS_MAP:
            return syscall.map_create(syscall.MapType.ARRAY, 4, programs.SETTINGS_SIZE, 1, name)
        return syscall.map_create(syscall.MapType.SOCKMAP, 4, 8, len(programs.ListenerRole), name)


class _Loaded:
    """The pod's maps (found or made) and both programs loaded against them on first use;
    every fd closed on exit (the devices hold what is attached)."""

    def __init__(self) -> None:
        self.maps: dict[str, int] = {}
        self._programs: dict[str, int] = {}

    def program(self, name: str) -> int:
        if name not in self._programs:
            items = programs.egress() if name == programs.EGRESS_PROGRAM else programs.ingress()
            with _kernel_support(f"loading the {name} program"):
                self._programs[name] = syscall.prog_load(
                    syscall.ProgType.SCHED_CLS, assemble(items, self.maps), name,
                    PROGRAM_LICENSE,
                )  # fmt: skip
        return self._programs[name]

    def close(self) -> None:
        for fd in (*self.maps.values(), *self._programs.values()):
            os.close(fd)


class EbpfCapture:
    """eBPF capture (`--redirect=ebpf`) of pods, by their network namespace's path."""

    def __init__(self, config: CaptureConfig = DEFAULT_CONFIG) -> None:
        if config.capture_dns:
            raise EbpfUnavailable("eBPF capture leaves DNS alone; --capture-dns needs iptables")
        self.config = config

    def check_supported(self) -> None:
        """Loads both programs once, attaching nothing: EbpfUnavailable (with the verifier's
        log when it refused one) if this kernel or process cannot capture this way."""
        loaded = _Loaded()
        try:
            for name in (programs.SETTINGS_MAP, programs.LISTENERS_MAP):
                loaded.maps[name] = _create_map(name)
            loaded.program(programs.EGRESS_PROGRAM)
            loaded.program(programs.INGRESS_PROGRAM)
        finally:
            loaded.close()

    def install(self, netns_path: str, pod_ip: str) -> None:
        """Captures the pod's TCP, or leaves nothing of ours behind and raises. Installing
        again changes nothing (new settings are written in place)."""
        with _inside(netns_path):
            accept_local = _accept_local()
            try:
                self._converge(netns_path, pod_ip)
            except BaseException as e:
                try:
                    self._remove(netns_path, accept_local)
                except Exception as cleanup:
                    e.add_note(f"removing the partial capture failed too: {cleanup}")
                raise

    def _converge(self, netns_path: str, pod_ip: str) -> None:
        found = attached.find()
        loaded = _Loaded()
        try:
            created = False
            for name in (programs.SETTINGS_MAP, programs.LISTENERS_MAP):
                if name in found.maps:
                    loaded.maps[name] = syscall.map_fd_by_id(found.maps[name])
                else:
                    loaded.maps[name] = _create_map(name)
                    created = True
            settings_map = loaded.maps[programs.SETTINGS_MAP]
            # What accept_local was before we first set it is kept until removal.
            before = _accept_local() if created else _settings(settings_map).accept_local_before
            settings = programs.Settings(
                self.config.probe_source, self.config.ports.hbone, pod_ip, before
            )
            syscall.map_update(settings_map, _SETTINGS_KEY, settings.encode())
            _set_accept_local(1)
            policy_route.add(netns_path)
            # Programs last, so capture starts complete. New maps: the old programs use
            # others, so all are replaced.
            self._attach(found, loaded, replace=created)
        finally:
            loaded.close()

    def _attach(self, found: Attached, loaded: _Loaded, replace: bool) -> None:
        wanted = attached.wanted_hooks()
        for hook, prog_ids in found.programs.items():
            keep = 0 if replace or hook not in wanted else 1  # never two of ours on a hook
            for prog_id in prog_ids[keep:]:
                attached.detach(hook, prog_id)
        for hook in wanted:
            if replace or hook not in found.programs:
                with _kernel_support(f"attaching {hook.program} to ifindex {hook.ifindex}"):
                    syscall.prog_attach(hook.ifindex, loaded.program(hook.program), hook.direction)

    def is_installed(self, netns_path: str) -> bool:
        """Whether the pod's capture is complete: programs, maps, policy route, accept_local."""
        try:
            with _inside(netns_path):
                found = attached.find()
                return (
                    found.hooks() >= set(attached.wanted_hooks())
                    and {programs.SETTINGS_MAP, programs.LISTENERS_MAP} <= set(found.maps)
                    and policy_route.present(netns_path)
                    and _accept_local() == 1
                )
        except FileNotFoundError:
            return False

    def remove(self, netns_path: str) -> None:
        """Removes the pod's capture, whatever part of it is there. A namespace that is gone
        took all of it along."""
        try:
            with _inside(netns_path):
                self._remove(netns_path)
        except FileNotFoundError:
            if os.path.exists(netns_path):
                raise

    def _remove(self, netns_path: str, accept_local: int | None = None) -> None:
        """Programs first (capture stops at once, and their maps go with them), then the
        policy route, and accept_local as it was before capture (`accept_local` when no
        settings map says)."""
        found = attached.find()
        before = accept_local
        if programs.SETTINGS_MAP in found.maps:
            with attached.opened(syscall.map_fd_by_id(found.maps[programs.SETTINGS_MAP])) as m:
                before = _settings(m).accept_local_before
        for hook, prog_ids in found.programs.items():
            for prog_id in prog_ids:
                attached.detach(hook, prog_id)
        policy_route.remove(netns_path)
        if before is not None:
            _set_accept_local(before)
