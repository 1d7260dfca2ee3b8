"""The node agent: keeps each enrolled pod of this node captured and handed to ztunnel.

Desired state: the enrolled pods of the node (`enrolment.py`, from the state store the
control plane feeds). Actual state: what this agent captured, and, after a restart, what it
finds in the namespaces (`reconcile_leftovers`). Each change is one `reconcile` pass:

- a new pod: find its namespace by IP, install capture (atomic), then AddWorkload to ztunnel
  (Istio's order: rules first, ztunnel picks the pod up from the snapshot if it is away). If
  ztunnel refuses, the capture is taken out again: never a redirect without a proxy behind it.
- a pod gone or opted out: capture out first, then DelWorkload.
- a pod whose namespace is not there yet (or vanished): logged, retried every
  RETRY_INTERVAL_S until it appears or the pod leaves.

Commands and setns run on one worker thread; the loop only decides.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ambient_fast.cni.enrolment import Enrolment, enrolled_pods
from ambient_fast.cni.netns_finder import AmbiguousNetns, NetnsFinder
from ambient_fast.cni.ztunnel_server import PodHandoff, ZdsAckError, ZtunnelServer
from ambient_fast.state import StateStore
from ambient_fast.state.store import StateChange

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_INTERVAL_S = 1.0


class Capture(Protocol):
    """One way of redirecting a pod's traffic to its in-pod proxy (iptables or eBPF)."""

    def install(self, netns_path: str, pod_ip: str) -> None: ...
    def remove(self, netns_path: str) -> None: ...
    def is_installed(self, netns_path: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Captured:
    pod: Enrolment
    netns_path: str


class CniAgent:
    def __init__(
        self,
        node: str,
        store: StateStore,
        server: ZtunnelServer,
        capture: Capture,
        finder: NetnsFinder | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.server = server
        self.capture = capture
        self.finder = finder or NetnsFinder()
        self.captured: dict[str, Captured] = {}
        self.pending: dict[str, str] = {}  # uid -> why it is not captured yet
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cni-agent")
        self._dirty = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None

    async def _blocking(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    def _on_change(self, change: StateChange) -> None:
        if change.workloads:
            self._dirty.set()

    async def run(self) -> None:
        """Reconciles on every change of the store (coalesced), and while pods are pending."""
        self._unsubscribe = self.store.subscribe(self._on_change)
        await self.reconcile_leftovers()
        while True:
            self._dirty.clear()
            await self.reconcile()
            timeout = RETRY_INTERVAL_S if self.pending else None
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout)
            except TimeoutError:
                pass

    async def reconcile_leftovers(self) -> None:
        """After an agent restart: capture found in the namespace of a pod of this node that
        is not enrolled (any more) is removed; enrolled pods are taken over by the next
        `reconcile`. Only this node's pods count: a namespace holding no address of them is
        another node's business (several nodes can share one machine)."""
        on_node = [w for w in self.store.workloads() if w.node == self.node]
        enrolled = {pod.ip for pod in enrolled_pods(on_node, self.node).values()}
        released = {str(ip) for w in on_node for ip in w.ips} - enrolled
        for path, ips in await self._blocking(self.finder.namespaces):
            if not ips & released or ips & enrolled:
                continue
            try:
                if await self._blocking(functools.partial(self.capture.is_installed, path)):
                    await self._blocking(functools.partial(self.capture.remove, path))
                    log.info("cni: removed leftover capture in %s (%s): pod not enrolled",
                             path, ", ".join(sorted(ips)))  # fmt: skip
            except Exception as e:  # one namespace's trouble must not stop the agent
                log.warning("cni: leftover capture in %s: %s", path, e)

    async def reconcile(self) -> None:
        desired = enrolled_pods(self.store.workloads(), self.node)
        for uid in [uid for uid in self.captured if uid not in desired]:
            await self._release(self.captured.pop(uid), "left the mesh")
        for uid in [uid for uid in self.pending if uid not in desired]:
            del self.pending[uid]
        for uid, pod in desired.items():
            held = self.captured.get(uid)
            if held is not None and held.pod == pod:
                continue
            if held is not None:  # same uid, new address or identity: start over
                await self._release(self.captured.pop(uid), "changed")
            await self._enrol(pod)

    async def _enrol(self, pod: Enrolment) -> None:
        try:
            path = await self._blocking(lambda: self.finder.find(pod.ip))
        except AmbiguousNetns as e:
            self._pend(pod, f"not captured: {e}")
            return
        if path is None:
            self._pend(pod, f"no network namespace holds {pod.ip} yet")
            return
        try:
            await self._blocking(lambda: self.capture.install(path, pod.ip))
        except Exception as e:  # a command failing must never stop the agent
            self._pend(pod, f"capture in {path} failed: {e}")
            return
        handoff = PodHandoff(pod.uid, pod.name, pod.namespace, pod.service_account, path)
        try:
            await self.server.add(handoff)
        except (ZdsAckError, OSError) as e:
            await self._blocking(lambda: self.capture.remove(path))
            self.server.pods.pop(pod.uid, None)
            self._pend(pod, f"ztunnel refused it ({e}); capture taken out")
            return
        self.pending.pop(pod.uid, None)
        self.captured[pod.uid] = Captured(pod, path)
        log.info("cni: captured %s/%s (%s) in %s", pod.namespace, pod.name, pod.ip, path)

    def _pend(self, pod: Enrolment, why: str) -> None:
        if self.pending.get(pod.uid) != why:
            log.warning("cni: pod %s/%s: %s; retrying", pod.namespace, pod.name, why)
        self.pending[pod.uid] = why

    async def _release(self, held: Captured, why: str) -> None:
        pod = held.pod
        try:
            await self._blocking(lambda: self.capture.remove(held.netns_path))
        except Exception as e:  # the namespace may be gone with the pod
            log.info("cni: %s/%s: capture removal in %s: %s", pod.namespace, pod.name,
                     held.netns_path, e)  # fmt: skip
        try:
            await self.server.delete(pod.uid)
        except (ZdsAckError, OSError) as e:
            log.warning("cni: %s/%s: ztunnel did not confirm the removal: %s",
                        pod.namespace, pod.name, e)  # fmt: skip
        log.info("cni: released %s/%s (%s)", pod.namespace, pod.name, why)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._worker.shutdown(wait=True)
