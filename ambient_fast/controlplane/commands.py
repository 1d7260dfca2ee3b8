"""The control plane's commands: `config` (and the shared -f/--node model flags)."""

from __future__ import annotations

import argparse
import sys

import orjson

from ambient_fast.controlplane.model import LoadResult, Topology, load_paths
from ambient_fast.controlplane.render import message_json
from ambient_fast.controlplane.translate import TranslateOptions, translate
from ambient_fast.controlplane.translate.policies import DEFAULT_ROOT_NAMESPACE
from ambient_fast.controlplane.translate.translate import DEFAULT_CLUSTER_ID, DEFAULT_TRUST_DOMAIN
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        required=True,
        metavar="PATH",
        help="YAML file or directory (repeatable)",
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=POD_CIDR",
        help="a node pods may be placed on (repeatable; default node-a, node-b)",
    )
    parser.add_argument("--cluster-id", default=DEFAULT_CLUSTER_ID)
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument("--root-namespace", default=DEFAULT_ROOT_NAMESPACE)


def load_model(args: argparse.Namespace) -> LoadResult:
    """Loads the files; every problem goes to stderr naming file, document and field."""
    topology = Topology.parse(args.node) if args.node else None
    result = load_paths(args.files, topology)
    for problem in result.report.problems:
        print(problem, file=sys.stderr)
    return result


def options_of(args: argparse.Namespace) -> TranslateOptions:
    return TranslateOptions(
        cluster_id=args.cluster_id,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
    )


def print_config(args: argparse.Namespace) -> int:
    """`ambient-fast config`: the resources, by type URL and name, as the server pushes them."""
    try:
        result = load_model(args)
    except ValueError as e:
        print(f"config: {e}", file=sys.stderr)
        return 2
    translation = translate(result.mesh, options_of(args))
    for note in translation.notes.problems:
        print(note, file=sys.stderr)
    document = {
        "resources": {
            ADDRESS_TYPE_URL: {
                n: message_json(m) for n, m in sorted(translation.addresses.items())
            },
            AUTHORIZATION_TYPE_URL: {
                n: message_json(m) for n, m in sorted(translation.authorizations.items())
            },
        }
    }
    sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return 1 if result.report.errors else 0
