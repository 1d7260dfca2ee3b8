"""`ambient-fast controlplane`: watch the YAML, translate on change, serve delta xDS on 15012.

Each published Mesh is translated into the store (only the resources an edit reaches, when
the watcher could tell what changed; else everything, diffed), so connected node proxies
receive only what changed; the CA on the same port follows the Mesh to know which
identities run on which node. A broken edit keeps the last good configuration (the
model's watcher never publishes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import signal
from pathlib import Path

import uvloop

from ambient_fast.controlplane.ca import Authority, AuthorityError, TokenStoreError, ValidityBounds
from ambient_fast.controlplane.ca.authority import DEFAULT_MIN_LIFETIME
from ambient_fast.controlplane.ca.tokens import TOKEN_DIRECTORY
from ambient_fast.controlplane.commands import add_model_arguments, options_of
from ambient_fast.controlplane.model import LoadReport, Mesh, ModelWatcher, Topology
from ambient_fast.controlplane.model.watch import DEFAULT_POLL_INTERVAL
from ambient_fast.controlplane.serving import CertificateAuthority, serving_context
from ambient_fast.controlplane.translate import LiveTranslation, TranslateOptions
from ambient_fast.xds.resources import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ISTIO_TYPE_URLS,
    WAYPOINT_CONFIG_TYPE_URL,
    ResourceStore,
)
from ambient_fast.xds.server import XdsServer
from ambient_fast.ztunnel.durations import parse_duration

log = logging.getLogger(__name__)

# istiod's xDS + CA port (reference 02).
DEFAULT_LISTEN = "0.0.0.0:15012"
DEFAULT_STATE_DIR = Path(".ambient-fast/controlplane")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    parser.add_argument(
        "--plaintext", action="store_true", help="serve without TLS (debugging only)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="S",
        help="seconds between checks of the files (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help="mesh root, node tokens, serving certificate (default: %(default)s)",
    )
    parser.add_argument(
        "--min-cert-lifetime",
        type=parse_duration,
        default=DEFAULT_MIN_LIFETIME.total_seconds(),
        metavar="DURATION",
        help="shortest workload certificate the CA issues, e.g. 10s for rotation tests "
        "(default: 10m)",
    )
    parser.add_argument(
        "--cacerts",
        type=Path,
        metavar="DIR",
        help="plug-in CA: istiod's cacerts files (ca-cert.pem, ca-key.pem, root-cert.pem, ...)",
    )


class ControlPlane:
    """The watcher -> translation -> store pipeline (no sockets: tests drive it directly)."""

    def __init__(
        self,
        watcher: ModelWatcher,
        options: TranslateOptions,
        ca: CertificateAuthority | None = None,
    ) -> None:
        # Istio's workload API for node proxies and our waypoint L7 configuration.
        self.store = ResourceStore((*ISTIO_TYPE_URLS, WAYPOINT_CONFIG_TYPE_URL))
        self.options = options
        self.translation = LiveTranslation(options)
        self.watcher = watcher
        self.ca = ca
        watcher.subscribe(self.publish)

    def publish(self, mesh: Mesh, report: LoadReport) -> None:
        if self.ca is not None:
            self.ca.follow(mesh)
        for problem in report.problems:
            log.warning("%s", problem)
        self.translation.options = self.options
        published = self.translation.publish(mesh, self.store)
        for note in published.notes:
            log.warning("%s", note)
        store = self.store
        log.info(
            "published %d addresses, %d authorizations, %d waypoint configs (%s, store version %d)",
            len(store.names(ADDRESS_TYPE_URL)),
            len(store.names(AUTHORIZATION_TYPE_URL)),
            len(store.names(WAYPOINT_CONFIG_TYPE_URL)),
            "changes only" if published.incremental else "full translation",
            store.system_version,
        )


async def serve(args: argparse.Namespace) -> None:
    topology = Topology.parse(args.node) if args.node else None
    watcher = ModelWatcher(args.files, topology=topology, interval=args.poll_interval)
    if args.cacerts:
        authority = Authority.plug_in(args.cacerts)
    else:
        authority = Authority.self_signed(args.state_dir, args.trust_domain)
    minimum = datetime.timedelta(seconds=args.min_cert_lifetime)
    ca = CertificateAuthority(
        authority, args.state_dir, args.trust_domain, ValidityBounds(minimum=minimum)
    )
    plane = ControlPlane(watcher, options_of(args), ca)
    watcher.poll()
    tls = None if args.plaintext else serving_context(authority, args.state_dir, args.trust_domain)
    host, _, port = args.listen.rpartition(":")
    server = XdsServer(plane.store, ssl=tls, services=[ca.service])
    await server.start(host.strip("[]"), int(port))
    log.info(
        "control plane on %s:%d: delta xDS and CA (%s); node tokens in %s",
        host,
        server.port,
        authority.source,
        args.state_dir / TOKEN_DIRECTORY,
    )
    try:
        await watcher.run()
    finally:
        await server.close()


def run_controlplane(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        task = asyncio.create_task(serve(args))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        uvloop.run(main())
    except (AuthorityError, TokenStoreError, OSError, ValueError) as e:
        log.error("controlplane: %s", e)
        return 1
    return 0
