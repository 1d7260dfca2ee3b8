"""`ambient-fast cni`: the node agent. Pods of the node come from the control plane (delta
xDS, the same Address resources ztunnel gets, with the node's token); the ZDS socket is
served for ztunnel; capture is iptables (default; TPROXY or REDIRECT variant) or eBPF."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from ambient_fast.cni.agent import Capture, CniAgent
from ambient_fast.cni.ebpf import EbpfCapture
from ambient_fast.cni.iptables import IptablesCapture
from ambient_fast.cni.netns_finder import NetnsFinder
from ambient_fast.cni.rules import DEFAULT_PROBE_SOURCE, CaptureConfig, Variant
from ambient_fast.cni.ztunnel_server import DEFAULT_SOCKET, ZtunnelServer
from ambient_fast.state import StateStore
from ambient_fast.xds.client import (
    XdsClient,
    XdsClientConfig,
    control_plane_tls,
    token_file,
)
from ambient_fast.xds.subscription import NodeIdentity
from ambient_fast.ztunnel.config import DEFAULT_ROOT_CERT, DEFAULT_TOKEN

log = logging.getLogger(__name__)

REDIRECT_MODES = ("iptables", "ebpf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    add = parser.add_argument
    add("--node-name", default=env("NODE_NAME"),
        help="the node whose pods this agent captures (env NODE_NAME)")  # fmt: skip
    add("--xds-address", default=env("XDS_ADDRESS", "https://localhost:15012"),
        help="control plane (env XDS_ADDRESS; default: %(default)s)")  # fmt: skip
    add("--alt-xds-hostname", default=env("ALT_XDS_HOSTNAME"),
        help="name the control plane's certificate must carry (env ALT_XDS_HOSTNAME)")  # fmt: skip
    add("--xds-root-cert", type=Path, default=Path(env("XDS_ROOT_CA", DEFAULT_ROOT_CERT)),
        help="roots trusted for the control plane (env XDS_ROOT_CA)")  # fmt: skip
    add("--token-file", type=Path, default=Path(env("AUTH_TOKEN", DEFAULT_TOKEN)),
        help="the node's bearer token (env AUTH_TOKEN)")  # fmt: skip
    add("--ztunnel-socket", type=Path, default=Path(env("INPOD_UDS", str(DEFAULT_SOCKET))),
        help="ZDS socket ztunnel connects to (env INPOD_UDS; default: %(default)s)")  # fmt: skip
    add("--redirect", choices=REDIRECT_MODES, default="iptables",
        help="capture mechanism (default: %(default)s)")  # fmt: skip
    add("--iptables-variant", choices=[v.value for v in Variant], default=Variant.TPROXY.value,
        help="inbound capture by TPROXY or nat REDIRECT (default: %(default)s)")  # fmt: skip
    add("--probe-source", default=DEFAULT_PROBE_SOURCE,
        help="kubelet probe source, not captured; '' for none (default: %(default)s)")  # fmt: skip
    add("--netns-prefix", default=None,
        help="only named namespaces (/run/netns) starting with this hold pods: several "
        "meshes on one machine")  # fmt: skip
    add("--capture-dns", action="store_true",
        help="redirect the pods' DNS (UDP and TCP 53) to ztunnel's DNS proxy on 15053, which "
        "must be on (ztunnel's ISTIO_META_DNS_CAPTURE, default true); iptables only, eBPF "
        "capture leaves DNS alone")  # fmt: skip


def capture_for(args: argparse.Namespace) -> Capture:
    config = CaptureConfig(
        variant=Variant(args.iptables_variant),
        probe_source=args.probe_source or None,
        capture_dns=args.capture_dns,
    )
    if args.redirect == "ebpf":
        capture = EbpfCapture(config)
        capture.check_supported()  # refused: EbpfUnavailable, pointing to iptables
        return capture
    return IptablesCapture(config)


async def serve(args: argparse.Namespace) -> None:
    store = StateStore()
    token = token_file(args.token_file) if args.token_file.exists() else None
    node = NodeIdentity(instance_ip="", pod_name="istio-cni", pod_namespace="istio-system",
                        node_name=args.node_name)  # fmt: skip
    roots = args.xds_root_cert.read_bytes()
    xds = XdsClient(
        XdsClientConfig(args.xds_address, node, control_plane_tls(roots), token=token,
                        server_name=args.alt_xds_hostname),
        store,
    )  # fmt: skip
    server = ZtunnelServer(args.ztunnel_socket)
    agent = CniAgent(
        args.node_name, store, server, capture_for(args), NetnsFinder(args.netns_prefix)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    xds.start()
    log.info("cni: node %s, %s capture, ZDS on %s, control plane %s", args.node_name,
             args.redirect, args.ztunnel_socket, args.xds_address)  # fmt: skip
    stopping = asyncio.ensure_future(stop.wait())
    ready = asyncio.ensure_future(xds.ready.wait())
    running: asyncio.Future[None] | None = None
    try:
        # SIGTERM is honoured while the control plane is still out of reach, too.
        await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            running = asyncio.ensure_future(agent.run())
            await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                running.result()  # an agent failure is the command's failure
    finally:
        for task in (stopping, ready, running):
            if task is not None:
                task.cancel()
        # Pods stay captured across an agent restart (as istio-cni's): the next agent takes
        # them over from the namespaces.
        await agent.close()
        await server.close()
        await xds.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.node_name:
        print("ambient-fast cni: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    import uvloop

    try:
        uvloop.run(serve(args))
    except (OSError, RuntimeError) as e:
        log.error("cni: cannot run: %s", e)
        return 1
    return 0
