"""The `ambient-fast` command: one subcommand per component or tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ambient_fast import __version__


def _version(_: argparse.Namespace) -> int:
    from ambient_fast import _native

    print(f"ambient-fast {__version__}")
    print(f"native {_native.__version__}")
    print(f"tls {_native.crypto_provider()}")
    return 0


def _relay(args: argparse.Namespace) -> int:
    from ambient_fast.splice import serve_relay_forever

    return serve_relay_forever(args.listen, args.to)


def _tunnel(args: argparse.Namespace) -> int:
    from ambient_fast.hbone.tunnel import run_tunnel

    return run_tunnel(args)


def _certs(args: argparse.Namespace) -> int:
    from ambient_fast.identity.files import write_demo_certificates

    return write_demo_certificates(args.out, args.identity, args.trust_domain)


def _perf(args: argparse.Namespace) -> int:
    from ambient_fast.perf_entry import run_perf

    return run_perf(args)


def _config(args: argparse.Namespace) -> int:
    from ambient_fast.controlplane.commands import print_config

    return print_config(args)


def _authz(args: argparse.Namespace) -> int:
    from ambient_fast.controlplane.authz import run_check

    return run_check(args)


def _explain(args: argparse.Namespace) -> int:
    from ambient_fast.controlplane.authz import run_explain

    return run_explain(args)


def _controlplane(args: argparse.Namespace) -> int:
    from ambient_fast.controlplane.run import run_controlplane

    return run_controlplane(args)


def _cni(args: argparse.Namespace) -> int:
    from ambient_fast.cni.app import run

    return run(args)


def _ztunnel(args: argparse.Namespace) -> int:
    from ambient_fast.ztunnel.app import run

    return run(args)


def _add_tunnel_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.hbone.tunnel import add_arguments

    add_arguments(parser)


def _add_controlplane_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.controlplane.run import add_arguments

    add_arguments(parser)


def _add_ztunnel_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.ztunnel.config import add_arguments

    add_arguments(parser)


def _add_cni_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.cni.app import add_arguments

    add_arguments(parser)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.controlplane.commands import add_model_arguments

    add_model_arguments(parser)


def _add_authz_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.controlplane.authz import add_check_arguments

    authz_sub = parser.add_subparsers(dest="authz_command", required=True)
    check = authz_sub.add_parser("check", help="would this connection or request be allowed?")
    add_check_arguments(check)
    check.add_argument("--http", nargs=2, metavar=("METHOD", "PATH"), help="an HTTP request")
    check.add_argument("-H", dest="header", action="append", default=[], metavar="NAME:VALUE")
    check.add_argument("--jwt", metavar="TOKEN", help="a bearer token (validated at the waypoint)")


def _add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    from ambient_fast.controlplane.authz import add_check_arguments

    add_check_arguments(parser)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand, with the arguments of `command` only (None: of all of them). Adding a
    subcommand's arguments imports its modules: a ztunnel never loads the control plane's."""
    parser = argparse.ArgumentParser(prog="ambient-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str,
        arguments: Callable[[argparse.ArgumentParser], None],
        help: str,
        description: str | None = None,
    ) -> None:
        subparser = sub.add_parser(name, help=help, description=description)
        if command is None or command == name:
            arguments(subparser)

    sub.add_parser("version", help="print package, native crate and TLS provider versions")

    relay = sub.add_parser("relay", help="plaintext TCP relay with splice(2)")
    relay.add_argument("--listen", required=True, metavar="HOST:PORT")
    relay.add_argument("--to", required=True, metavar="HOST:PORT")

    add("tunnel", _add_tunnel_arguments, help="an HBONE (mTLS HTTP/2 CONNECT) tunnel endpoint")

    certs = sub.add_parser("certs", help="create a mesh root and workload certificates")
    certs.add_argument("--out", required=True, metavar="DIR")
    certs.add_argument("--identity", action="append", required=True, metavar="SPIFFE_ID")
    certs.add_argument("--trust-domain", default="cluster.local")

    add(
        "controlplane",
        _add_controlplane_arguments,
        help="serve the workload API (delta xDS) and the CA on 15012",
    )
    add(
        "ztunnel",
        _add_ztunnel_arguments,
        help="the node proxy: outbound 15001, HBONE 15008, plaintext 15006 (in-pod or dedicated)",
        description="Istio's ztunnel. Each setting is a flag or the environment variable shown"
        " (the flag wins).",
    )
    add(
        "cni",
        _add_cni_arguments,
        help="the CNI node agent: captures the node's ambient pods, hands them to ztunnel",
    )
    add("config", _add_config_arguments, help="the xDS resources the control plane would serve")
    add("authz", _add_authz_arguments, help="offline policy tools on a mesh's YAML")
    add("explain", _add_explain_arguments, help="the path a connection takes through the mesh")

    perf = sub.add_parser("perf", help="benchmarks with ratios to anchors (source checkout)")
    perf.add_argument(
        "suite",
        choices=["l4", "python-cpu", "controlplane", "ztunnel", "cni"],
        help="l4: throughput/latency vs anchors; python-cpu: interpreter share of proxy CPU;"
        " controlplane: translate, push latency and memory on a 10k-pod mesh;"
        " ztunnel: a ztunnel pair between two pod netns vs direct and stunnel (root);"
        " cni: label -> capture time and throughput with iptables / eBPF capture (root)",
    )
    perf.add_argument("--duration", type=float, default=5.0, metavar="S")
    perf.add_argument("--json", metavar="FILE")
    return parser


_HANDLERS = {
    "version": _version,
    "relay": _relay,
    "tunnel": _tunnel,
    "certs": _certs,
    "perf": _perf,
    "config": _config,
    "controlplane": _controlplane,
    "authz": _authz,
    "explain": _explain,
    "ztunnel": _ztunnel,
    "cni": _cni,
}


# Long-running proxies: tuned before anything loads (`process_tuning`).
DATA_PATH_COMMANDS = frozenset({"ztunnel", "tunnel"})


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = words[0] if words and words[0] in _HANDLERS else None
    if argv is None and command in DATA_PATH_COMMANDS:
        # Only as the program itself: it may re-execute the process.
        from ambient_fast.process_tuning import tune_data_path_process

        tune_data_path_process()
    args = build_parser(command).parse_args(words)
    return _HANDLERS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
