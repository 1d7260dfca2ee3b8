"""`ambient-fast ztunnel`: builds the node proxy from a `ZtunnelConfig`, starts it, drains it.

`Ztunnel` wires the state (xDS client, or LOCAL_XDS_PATH / LOCAL_XDS), the certificate manager
(CA_ADDRESS, or FAKE_CA's self-signed root), the proxies' three listeners (outbound 15001,
inbound HBONE 15008, inbound plaintext 15006) and DNS proxy (localhost:15053 unless
ISTIO_META_DNS_CAPTURE=false), metrics on 15020, admin on localhost:15000 and readiness on
15021. PROXY_MODE=dedicated: one proxy on the node's sockets for
PROXY_WORKLOAD_INFO; ready = config received, listeners up, the workload's certificate in hand.
PROXY_MODE=shared (Istio's default): a proxy per pod the CNI node agent hands over on INPOD_UDS,
inside the pod's netns (`inpod.py`); ready = config received and the agent's snapshot in, as
ztunnel (no pod needed; not while the agent is away). SIGTERM or POST /quitquitquit: readiness
goes 503, listeners close, open connections get the drain deadline, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ambient_fast._native import HbonePool
from ambient_fast.hbone.client import HboneClient
from ambient_fast.identity.issuer import CertificateIssuer, SelfSignedCa
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics import Metrics, MetricsServer
from ambient_fast.splice import SpliceRelay
from ambient_fast.state import LocalConfigWatcher, StateChange, StateStore, Workload
from ambient_fast.state.local import LocalSource, parse_local_config
from ambient_fast.ztunnel.accesslog import AccessLog, istio_handler
from ambient_fast.ztunnel.admin import AdminEndpoint, HttpServer, readiness
from ambient_fast.ztunnel.config import (
    ConfigError,
    ProxyMode,
    ZtunnelConfig,
    from_args,
)
from ambient_fast.ztunnel.config_dump import workload_state_entry
from ambient_fast.ztunnel.dns.forwarder import DEFAULT_RESOLV_CONF, ResolvConf
from ambient_fast.ztunnel.dns.resolver import (
    DnsResolver,
    kubernetes_search_domains,
    static_search_domains,
)
from ambient_fast.ztunnel.dns.server import open_dns_sockets
from ambient_fast.ztunnel.proxy import DnsContext, ProxyContext, ProxySockets, WorkloadProxy
from ambient_fast.ztunnel.sockets import (
    PROXY_MARK,
    UpstreamDialer,
    listening_socket_everywhere,
    set_mark,
)

if TYPE_CHECKING:
    from ambient_fast.xds.client import XdsClient
    from ambient_fast.ztunnel.inpod import InPodProxies, ZdsClient
    from ambient_fast.ztunnel.pod_netns import NetnsThread

log = logging.getLogger(__name__)

ADMIN_ADDRESS = "127.0.0.1"  # ztunnel's admin listens on localhost only
ROOT_CERT_FILE = "root-cert.pem"  # FAKE_CA_ROOT's files, as `ambient-fast certs` names them
ROOT_KEY_FILE = "root-key.pem"


def raise_fd_limit() -> int:
    """RLIMIT_NOFILE soft = hard (ztunnel does the same at start); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("ztunnel: cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, e)
            return soft
    return hard


def _pool_mark() -> int | None:
    """PROXY_MARK for HBONE pool sockets when this process may set marks (CAP_NET_ADMIN);
    without it ztunnel's redirect rules would capture our own tunnels, so say so loudly."""
    probe = socket.socket()
    try:
        set_mark(probe, PROXY_MARK)
    except PermissionError:
        log.warning(
            "ztunnel: cannot set SO_MARK %#x (no CAP_NET_ADMIN); tunnels are unmarked", PROXY_MARK
        )
        return None
    finally:
        probe.close()
    return PROXY_MARK


class Ztunnel:
    """One node proxy. `bind` replaces "every address" for the node's listeners (tests bind
    loopback); the admin endpoint and the DNS proxy are always on localhost. `resolv_conf` is
    where the DNS proxy finds its upstreams (tests write their own)."""

    def __init__(
        self,
        config: ZtunnelConfig,
        *,
        bind: str | None = None,
        resolv_conf: Path = DEFAULT_RESOLV_CONF,
    ) -> None:
        self.config = config
        self._bind = bind
        self._resolv_conf = resolv_conf
        self.shared = config.proxy_mode is ProxyMode.SHARED
        self._info = config.proxy_workload_info  # dedicated: validate() demands it
        self.store = StateStore()
        self.local: set[str] = set()  # dedicated: the workload's uids
        self._unsubscribe: Callable[[], None] = (
            (lambda: None) if self.shared else self.store.subscribe(self._on_change)
        )
        self.self_signed: SelfSignedCa | None = None
        issuer, roots = self._issuer()
        self.certificates = CertificateManager(issuer, roots)
        self.metrics = Metrics(in_pod=self.shared, dns=config.dns_proxy)
        self.access_log = AccessLog()
        self._ports = frozenset(
            {config.outbound_port, config.inbound_port, config.inbound_plaintext_port}
        )
        self._xds: XdsClient | None = None
        self._watcher: LocalConfigWatcher | None = None
        self._inline_loaded = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._draining = False
        self._listening = False
        self._relay: SpliceRelay | None = None
        self._proxy: WorkloadProxy | None = None  # dedicated
        self._netns_thread: NetnsThread | None = None  # shared
        self.pods: InPodProxies | None = None
        self.zds: ZdsClient | None = None
        self._zds_task: asyncio.Task[None] | None = None
        self._stats: MetricsServer | None = None
        self._admin: HttpServer | None = None
        self._readiness: HttpServer | None = None

    # -- building -------------------------------------------------------------------------

    def _issuer(self) -> tuple[CertificateIssuer, bytes]:
        config = self.config
        validity = datetime.timedelta(seconds=config.secret_ttl)
        if config.fake_ca:
            if config.fake_ca_root is not None:
                # A root shared by several standalone proxies (`ambient-fast certs` writes it).
                self.self_signed = SelfSignedCa.load(
                    config.fake_ca_root / ROOT_CERT_FILE,
                    config.fake_ca_root / ROOT_KEY_FILE,
                    validity,
                )
            else:
                self.self_signed = SelfSignedCa.create(config.cluster_domain, validity)
            return self.self_signed, self.self_signed.roots_pem
        assert config.ca_address is not None
        # gRPC (grpclib, h2, the CA's protos) only for a proxy that calls a CA: about 2.5 MiB.
        from ambient_fast.identity.ca_client import CaClient, TokenFile

        roots = config.ca_root_cert.read_bytes()
        token = TokenFile(config.token_file) if config.token_file.exists() else None
        # Shared mode asks for each pod's identity with the node's token (ImpersonatedIdentity);
        # dedicated mode's token is the workload's own (ca_client.py).
        client = CaClient(
            config.ca_address, roots, token, impersonate=self.shared, validity=validity,
            server_name=config.alt_ca_hostname,
        )  # fmt: skip
        return client, roots

    def _is_local(self, workload: Workload) -> bool:
        info = self._info
        assert info is not None  # subscribed in dedicated mode only
        return workload.namespace == info.namespace and info.name in (
            workload.name,
            workload.workload_name,
        )

    def _on_change(self, change: StateChange) -> None:
        # Subscribed before the inbound server: the set is current when it re-reads the uids.
        for uid in change.workloads:
            workload = self.store.workload_by_uid(uid)
            if workload is not None and self._is_local(workload):
                self.local.add(uid)
            else:
                self.local.discard(uid)

    def _start_config(self) -> None:
        config = self.config
        if config.local_xds_path is not None:
            self._watcher = LocalConfigWatcher(config.local_xds_path, self.store)
            self._watcher.poll()
            self._spawn(self._watcher.run())
        elif config.local_xds is not None:
            LocalSource(self.store).apply(parse_local_config(config.local_xds, "LOCAL_XDS"))
            self._inline_loaded = True
        else:
            assert config.xds_address is not None
            # Like the CA client: grpclib only for a proxy that talks delta xDS.
            from ambient_fast.xds.client import (
                XdsClient,
                XdsClientConfig,
                control_plane_tls,
                token_file,
            )
            from ambient_fast.xds.subscription import NodeIdentity

            roots = config.xds_root_cert.read_bytes()
            token = token_file(config.token_file) if config.token_file.exists() else None
            node = NodeIdentity(
                instance_ip=str(config.instance_ip or ""),
                pod_name=config.pod_name or "",
                pod_namespace=config.pod_namespace or "",
                node_name=config.node_name or "",
                cluster_id=config.cluster_id,
            )
            xds_config = XdsClientConfig(
                config.xds_address, node, control_plane_tls(roots), token=token,
                server_name=config.alt_xds_hostname,
            )  # fmt: skip
            self._xds = XdsClient(xds_config, self.store)
            self._xds.start()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Opens every endpoint; readiness answers 503 until `ready()`."""
        config = self.config
        self._readiness = HttpServer(
            readiness(self.ready), self._bind, config.readiness_port, "readiness"
        )
        await self._readiness.start()
        dns = self._dns_context()  # a resolv.conf without nameservers stops us here
        self._start_config()
        self._relay = SpliceRelay()
        context = ProxyContext(
            self.store,
            self.certificates,
            self.metrics,
            self.access_log,
            self._relay,
            config.network,
            self._ports,
            dns,
        )
        if self.shared:
            await self._start_shared(context)
        else:
            await self._start_dedicated(context)
        self._stats = MetricsServer(self.metrics, self._bind, config.stats_port)
        await self._stats.start()
        workload_state = (
            self.pods.workload_state if self.pods is not None else self._dedicated_state
        )
        self._admin = HttpServer(
            AdminEndpoint(self.store, self.certificates, config, self.stop, workload_state),
            ADMIN_ADDRESS,
            config.admin_port,
            "admin",
        )
        await self._admin.start()
        self._listening = True

    def _dedicated_state(self) -> dict[str, Any]:
        """`workloadState` with the one workload this proxy serves, so `istioctl ztunnel-config
        connections` lists its connections as it does in-pod mode's (keyed by its store uid)."""
        info = self._info
        if self._proxy is None or info is None:
            return {}
        key = min(self.local, default=f"{info.namespace}/{info.name}")
        return {key: workload_state_entry("Up", info, self._proxy.connections())}

    def _dns_context(self) -> DnsContext | None:
        config = self.config
        if not config.dns_proxy:
            return None
        upstream = ResolvConf.load(self._resolv_conf)
        # Shared mode: each pod's Kubernetes search list; dedicated: our own resolv.conf's
        # (ztunnel's SystemForwarder).
        search = (
            kubernetes_search_domains(config.cluster_domain)
            if self.shared
            else static_search_domains(upstream.search)
        )
        resolver = DnsResolver(
            self.store, cluster_domain=config.cluster_domain, search_domains=search
        )
        log.info(
            "ztunnel: DNS proxy on localhost:%d, upstream %s (%s)",
            config.dns_port,
            ", ".join(upstream.nameservers),
            self._resolv_conf,
        )
        return DnsContext(resolver, upstream, config.dns_port)

    async def _start_dedicated(self, context: ProxyContext) -> None:
        config, bind = self.config, self._bind
        opened: list[socket.socket] = []
        try:
            for port in (config.outbound_port, config.inbound_port, config.inbound_plaintext_port):
                opened.append(listening_socket_everywhere(port, bind))
            dns = open_dns_sockets(config.dns_port) if context.dns is not None else None
        except BaseException:
            for listener in opened:
                listener.close()
            raise
        outbound, inbound, plaintext = opened
        sockets = ProxySockets(
            outbound=outbound,
            inbound=inbound,
            plaintext=plaintext,
            hbone=HboneClient(HbonePool(mark=_pool_mark())),
            inbound_dialer=UpstreamDialer(),
            outbound_dialer=UpstreamDialer(transparent=False),
            dns=dns,
        )
        proxy_ips = (config.instance_ip,) if config.instance_ip is not None else ()
        self._proxy = WorkloadProxy(context, sockets, self.local, proxy_ips=proxy_ips)
        await self._proxy.start()
        assert self._info is not None
        dns_server = self._proxy.dns
        log.info(
            "ztunnel: dedicated proxy for %s/%s, outbound %s, inbound %s, plaintext %s, dns %s",
            self._info.namespace,
            self._info.name,
            self._proxy.outbound.address,
            self._proxy.inbound.address,
            self._proxy.plaintext.address,
            [f"{t.value} {a}" for t, a in dns_server.addresses] if dns_server else "off",
        )

    async def _start_shared(self, context: ProxyContext) -> None:
        # In-pod machinery (ZDS, setns, eBPF listener maps, ctypes) only where it is used.
        from ambient_fast.ztunnel.inpod import InPodProxies, ZdsClient
        from ambient_fast.ztunnel.pod_netns import NetnsThread

        config = self.config
        self._netns_thread = NetnsThread()
        try:
            await self._netns_thread.check_capable()
        except PermissionError as e:
            raise PermissionError(
                e.errno, f"in-pod mode needs CAP_SYS_ADMIN (setns) and CAP_NET_ADMIN: {e}"
            ) from e
        ports = (config.outbound_port, config.inbound_port, config.inbound_plaintext_port)
        self.pods = InPodProxies(context, ports, self._netns_thread, self.metrics.workload_manager)
        self.zds = ZdsClient(config.inpod_uds, self.pods)
        self._zds_task = asyncio.ensure_future(self.zds.run())
        log.info("ztunnel: in-pod mode, pods from the node agent at %s", config.inpod_uds)

    # -- readiness and drain --------------------------------------------------------------

    def config_ready(self) -> bool:
        if self._xds is not None:
            return self._xds.ready.is_set()
        if self._watcher is not None:
            return self._watcher.config is not None
        return self._inline_loaded

    def certificates_ready(self) -> bool:
        """Every local workload's identity has a certificate (served from the first CONNECT)."""
        identities = {
            w.identity for uid in self.local if (w := self.store.workload_by_uid(uid)) is not None
        }
        return all(self.certificates.current(i) is not None for i in identities)

    def ready(self) -> bool:
        if self._draining or not self._listening or not self.config_ready():
            return False
        if self.zds is not None:
            return self.zds.ready
        return self.certificates_ready()

    def stop(self) -> None:
        """Starts the drain (SIGTERM, /quitquitquit); `run` returns once it is done."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def drain(self) -> None:
        """503 on readiness, listeners closed, open connections until the deadline, then
        everything else closed."""
        self._draining = True
        deadline = self.config.drain_deadline
        log.info("ztunnel: draining (deadline %gs)", deadline)
        await self._stop_zds()
        if self._proxy is not None:
            await self._proxy.drain(deadline)
        if self.pods is not None:
            await self.pods.drain(deadline)
        self._listening = False
        await self.close()

    async def _stop_zds(self) -> None:
        """No pod starts or stops from here on."""
        if self._zds_task is not None:
            self._zds_task.cancel()
            await asyncio.gather(self._zds_task, return_exceptions=True)

    async def close(self) -> None:
        """Stops every task and server (after `drain`, or to abandon a failed start)."""
        if self._xds is not None:
            await self._xds.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.certificates.aclose()
        for server in (self._stats, self._admin, self._readiness):
            if server is not None:
                await server.close()
        # After `drain` nothing is left; an abandoned start's proxies are cut here.
        await self._stop_zds()
        if self._proxy is not None:
            await self._proxy.drain(0)
        if self.pods is not None:
            await self.pods.drain(0)
            self.pods.close()
        if self._netns_thread is not None:
            self._netns_thread.close()
        if self._relay is not None:
            self._relay.close()
        self._unsubscribe()
        log.info("ztunnel: stopped")

    async def run(self) -> int:
        """Starts, serves until `stop()` (SIGTERM, /quitquitquit), drains; returns 0."""
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
        try:
            await self._stop.wait()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)
            await self.drain()
        return 0


def _configure_logging(config: ZtunnelConfig) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(istio_handler(config.log_format))
    root.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    """The `ztunnel` subcommand: config from flags and environment, then serve until drained."""
    try:
        config = from_args(args, os.environ)
    except ConfigError as e:
        print(f"ambient-fast ztunnel: {e}", file=sys.stderr)
        return 2
    _configure_logging(config)
    limit = raise_fd_limit()
    log.info("ztunnel: RLIMIT_NOFILE %d", limit)
    if config.worker_threads:
        from ambient_fast import _native

        _native.configure_runtime(config.worker_threads)
    import uvloop

    try:
        return uvloop.run(Ztunnel(config).run())
    except (ConfigError, OSError) as e:
        log.error("ztunnel: cannot start: %s", e)
        return 1
