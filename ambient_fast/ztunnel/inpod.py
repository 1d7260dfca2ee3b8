"""In-pod (shared) mode: one proxy per pod the CNI node agent hands over, inside the pod's netns.

`ZdsClient` connects to the agent's unix socket (INPOD_UDS, SOCK_SEQPACKET; the agent listens,
ztunnel connects, as istio/ztunnel src/inpod/workloadmanager.rs), says hello, and runs each
request through the sans-IO `ZdsSession` (`ztunnel/zds.py`); fds arrive with recvmsg
SCM_RIGHTS. Away or gone, the agent is retried with backoff (10 ms doubling to 15 s) and the
pods keep running; the next connection's snapshot reconciles them.

`InPodProxies` starts and stops the pods' `WorkloadProxy`s. A pod's proxy serves the workloads
of the store with the pod's namespace and name (its outbound source, its inbound destinations)
with the certificate of the pod's service account, prefetched on add and forgotten when the
last pod with that identity leaves. A deleted pod's connections are cut at once (ztunnel's
immediate drain: the pod is gone); at shutdown every pod drains with the deadline.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambient_fast.identity.schedule import Priority
from ambient_fast.identity.spiffe import Identity
from ambient_fast.metrics import WorkloadManagerMetrics
from ambient_fast.state import StateChange, Workload
from ambient_fast.ztunnel.config import WorkloadInfo
from ambient_fast.ztunnel.config_dump import workload_state_entry
from ambient_fast.ztunnel.pod_netns import NetnsThread, PodNamespace
from ambient_fast.ztunnel.proxy import ProxyContext, WorkloadProxy
from ambient_fast.ztunnel.zds import Packet, PodStart, Step, ZdsSession

log = logging.getLogger(__name__)

# Reconnect backoff (ztunnel: 10 ms doubling, at most 15 s).
RETRY_INITIAL = 0.01
RETRY_MAX = 15.0
# Room for one request and a few fds: more than one fd is refused by name, not cut silently.
MAX_MESSAGE = 64 * 1024
MAX_FDS = 8
_FD_SIZE = array.array("i").itemsize


@dataclass(frozen=True, eq=False)
class PodProxy:
    uid: str
    info: WorkloadInfo
    identity: Identity
    namespace: PodNamespace
    local: set[str]  # store uids of the pod's workload
    proxy: WorkloadProxy


class InPodProxies:
    """The node's pod proxies, by ZDS uid."""

    def __init__(
        self,
        context: ProxyContext,
        ports: tuple[int, int, int],  # outbound, inbound HBONE, inbound plaintext
        thread: NetnsThread,
        metrics: WorkloadManagerMetrics | None = None,
    ) -> None:
        self._context = context
        self._ports = ports
        self._thread = thread
        self._metrics = metrics
        self._pods: dict[str, PodProxy] = {}
        self._starting: dict[str, WorkloadInfo] = {}
        # The store's uids of each pod's workload (by namespace and name), and back.
        self._by_name: dict[tuple[str, str], set[str]] = {}
        self._owner: dict[str, set[str]] = {}
        # Before any pod's inbound server subscribes: local sets are current when they re-read.
        self._unsubscribe = context.store.subscribe(self._on_change)
        if metrics is not None:
            metrics.pending_proxy_count.set(0)
            metrics.active_proxy_count.set(0)

    async def start(self, start: PodStart) -> None:
        """Starts the pod's proxy; raises (OSError: the netns, a listener) with nothing left
        behind and the netns fd closed."""
        info = start.info
        namespace = PodNamespace(start.netns, self._thread)
        self._starting[start.uid] = info
        dns = self._context.dns
        try:
            sockets = await namespace.proxy_sockets(
                *self._ports, dns_port=dns.port if dns is not None else None
            )
        except BaseException:
            namespace.close()
            raise
        finally:
            self._starting.pop(start.uid, None)
        local = self._index(info)
        try:
            proxy = WorkloadProxy(
                self._context,
                sockets,
                local,
                source_of=lambda _client: self._workload(local),
                passthrough_unknown_sources=False,
            )
        except BaseException:
            sockets.close()
            namespace.close()
            self._unindex(info, local)
            raise
        workload = self._workload(local)
        identity = (
            workload.identity
            if workload is not None
            else Identity.of(info.namespace, info.service_account)
        )
        try:
            await proxy.start()
        except BaseException:  # its sockets are closed
            namespace.close()
            self._unindex(info, local)
            raise
        pod = PodProxy(start.uid, info, identity, namespace, local, proxy)
        self._context.certificates.request(identity, Priority.WARMUP)
        self._pods[pod.uid] = pod
        self._count(started=1)
        log.info(
            "inpod: pod %s (%s/%s) served in its netns as %s",
            pod.uid,
            info.namespace,
            info.name,
            identity,
        )

    async def stop(self, uid: str, deadline: float = 0.0) -> None:
        """Closes the pod's listeners, gives its connections `deadline` seconds, closes its
        netns; a uid we do not run is ignored."""
        pod = self._pods.pop(uid, None)
        if pod is None:
            return
        self._unindex(pod.info, pod.local)
        await pod.proxy.drain(deadline)
        pod.namespace.close()
        if all(other.identity != pod.identity for other in self._pods.values()):
            self._context.certificates.forget(pod.identity)
        self._count(stopped=1)
        log.info("inpod: pod %s (%s/%s) stopped", uid, pod.info.namespace, pod.info.name)

    async def drain(self, deadline: float) -> None:
        """Every pod, concurrently (shutdown)."""
        await asyncio.gather(*(self.stop(uid, deadline) for uid in list(self._pods)))

    def close(self) -> None:
        self._unsubscribe()

    def workload_state(self) -> dict[str, Any]:
        """ztunnel's `workloadState` of /config_dump: uid -> state, connections, workload info."""
        dump = {uid: workload_state_entry("Pending", i) for uid, i in self._starting.items()}
        dump.update(
            {
                uid: workload_state_entry("Up", pod.info, pod.proxy.connections())
                for uid, pod in self._pods.items()
            }
        )
        return dump

    # -- the pod's workloads in the store ---------------------------------------------------

    def _workload(self, local: set[str]) -> Workload | None:
        for uid in local:
            workload = self._context.store.workload_by_uid(uid)
            if workload is not None:
                return workload
        return None

    def _index(self, info: WorkloadInfo) -> set[str]:
        key = (info.namespace, info.name)
        local: set[str] = set()
        self._by_name[key] = local
        for workload in self._context.store.workloads():
            if (workload.namespace, workload.name) == key:
                self._claim(workload.uid, local)
        return local

    def _unindex(self, info: WorkloadInfo, local: set[str]) -> None:
        key = (info.namespace, info.name)
        if self._by_name.get(key) is local:
            del self._by_name[key]
        for uid in local:
            if self._owner.get(uid) is local:
                del self._owner[uid]

    def _claim(self, uid: str, local: set[str]) -> None:
        previous = self._owner.get(uid)
        if previous is not None:
            previous.discard(uid)
        self._owner[uid] = local
        local.add(uid)

    def _on_change(self, change: StateChange) -> None:
        for uid in change.workloads:
            workload = self._context.store.workload_by_uid(uid)
            key = (workload.namespace, workload.name) if workload is not None else None
            local = self._by_name.get(key) if key is not None else None
            if local is not None:
                self._claim(uid, local)
            elif (previous := self._owner.pop(uid, None)) is not None:
                previous.discard(uid)

    def _count(self, *, started: int = 0, stopped: int = 0) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        if started:
            metrics.proxies_started.inc(amount=started)
        if stopped:
            metrics.proxies_stopped.inc(amount=stopped)
        metrics.active_proxy_count.set(len(self._pods))


class ZdsClient:
    """The connection to the node agent: requests in, pods started and stopped, acks out."""

    def __init__(self, path: Path, pods: InPodProxies) -> None:
        self.path = path
        self.session = ZdsSession()
        self._pods = pods
        self._connected = False

    @property
    def ready(self) -> bool:
        """Connected and the agent's snapshot is in (ztunnel's workload manager readiness)."""
        return self._connected and self.session.snapshot_received

    async def run(self) -> None:
        """Serves the agent until cancelled, reconnecting with backoff."""
        delay = RETRY_INITIAL
        while True:
            try:
                handled = await self._serve_connection()
                log.info("zds: the node agent closed the connection after %d requests", handled)
            except OSError as e:
                handled = 0
                log.warning(
                    "zds: node agent at %s: %s (is the CNI node agent running?); retry in %gs",
                    self.path,
                    e,
                    delay,
                )
            finally:
                self._connected = False
            if handled:
                delay = RETRY_INITIAL
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _serve_connection(self) -> int:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        with sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(self.path))
            await loop.sock_sendall(sock, self.session.connected())
            self._connected = True
            log.info("zds: connected to the node agent at %s", self.path)
            handled = 0
            while (packet := await _receive(sock)) is not None:
                ack = await self._handle(self.session.receive(packet))
                await loop.sock_sendall(sock, ack)
                handled += 1
            return handled

    async def _handle(self, step: Step) -> bytes:
        for uid in step.stop:
            await self._pods.stop(uid)
        if step.start is None:
            assert step.ack is not None  # a step without a start carries its ack
            return step.ack
        try:
            await self._pods.start(step.start)
        except Exception as e:
            if not isinstance(e, OSError | ValueError):  # a bug: refuse the pod, keep serving
                log.exception("inpod: starting pod %s failed", step.start.uid)
            return self.session.start_failed(step.start, str(e))
        return self.session.started(step.start)


async def _receive(sock: socket.socket) -> Packet | None:
    """The next packet with its fds; None at end of stream."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, ancillary, flags, _ = sock.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
            )
            break
        except BlockingIOError:
            readable: asyncio.Future[None] = loop.create_future()

            def wake(readable: asyncio.Future[None] = readable) -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(sock.fileno(), wake)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
    if not data and not fds:
        return None
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    return Packet(bytes(data), tuple(fds), truncated)
