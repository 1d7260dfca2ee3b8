"""`ambient-fast controlplane`: watch the YAML, translate on change, serve delta xDS on 15012.

Each published Mesh is translated and replaces the store's contents, so connected node
proxies receive only what changed. A broken edit keeps the last good configuration (the
model's watcher never publishes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl

import uvloop

from ambient_fast.controlplane.commands import add_model_arguments, options_of
from ambient_fast.controlplane.model import LoadReport, Mesh, ModelWatcher, Topology
from ambient_fast.controlplane.translate import TranslateOptions, translate
from ambient_fast.xds.resources import ResourceStore
from ambient_fast.xds.server import XdsServer

log = logging.getLogger(__name__)

# istiod's xDS + CA port (reference 02).
DEFAULT_LISTEN = "0.0.0.0:15012"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    parser.add_argument(
        "--plaintext", action="store_true", help="serve without TLS (debugging only)"
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, metavar="S")


class ControlPlane:
    """The watcher -> translation -> store pipeline (no sockets: tests drive it directly)."""

    def __init__(self, watcher: ModelWatcher, options: TranslateOptions) -> None:
        self.store = ResourceStore()
        self.options = options
        self.watcher = watcher
        watcher.subscribe(self.publish)

    def publish(self, mesh: Mesh, report: LoadReport) -> None:
        for problem in report.problems:
            log.warning("%s", problem)
        translation = translate(mesh, self.options)
        for note in translation.notes.problems:
            log.warning("%s", note)
        translation.publish(self.store)
        log.info(
            "published %d addresses, %d authorizations (store version %d)",
            len(translation.addresses),
            len(translation.authorizations),
            self.store.system_version,
        )


async def serve(args: argparse.Namespace, tls: ssl.SSLContext | None) -> None:
    topology = Topology.parse(args.node) if args.node else None
    watcher = ModelWatcher(args.files, topology=topology, interval=args.poll_interval)
    plane = ControlPlane(watcher, options_of(args))
    watcher.poll()
    host, _, port = args.listen.rpartition(":")
    server = XdsServer(plane.store, ssl=tls)
    await server.start(host.strip("[]"), int(port))
    log.info("control plane serving delta xDS on %s:%d", host, server.port)
    try:
        await watcher.run()
    finally:
        await server.close()


def run_controlplane(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.plaintext:
        log.error("TLS serving needs the mesh CA (not wired yet): use --plaintext")
        return 2

    async def main() -> None:
        task = asyncio.create_task(serve(args, None))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    uvloop.run(main())
    return 0
