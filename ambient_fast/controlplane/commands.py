"""The control plane's commands: `config` (and the flags every model command shares)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import orjson

from ambient_fast.controlplane.model import LoadResult, Topology, load_paths
from ambient_fast.controlplane.render import message_json
from ambient_fast.controlplane.translate import TranslateOptions, translate
from ambient_fast.controlplane.translate.policies import DEFAULT_ROOT_NAMESPACE
from ambient_fast.controlplane.translate.translate import (
    DEFAULT_AUTO_ALLOW_WAYPOINT_POLICY,
    DEFAULT_CLUSTER_ID,
    DEFAULT_TRUST_DOMAIN,
)
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

# istiod reads it from its environment (pilot/pkg/features/ambient.go).
AUTO_ALLOW_WAYPOINT_POLICY_ENV = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY"
# Go's strconv.ParseBool, which istiod's env.Register uses.
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


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
    parser.add_argument(
        "--auto-allow-waypoint-policy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a synthetic ALLOW of each waypoint's identity at the workloads it serves, as "
        f"istiod's {AUTO_ALLOW_WAYPOINT_POLICY_ENV} (env {AUTO_ALLOW_WAYPOINT_POLICY_ENV}; "
        "default: off)",
    )


def load_model(args: argparse.Namespace) -> LoadResult:
    """Loads the files; every problem goes to stderr naming file, document and field."""
    topology = Topology.parse(args.node) if args.node else None
    result = load_paths(args.files, topology)
    for problem in result.report.problems:
        print(problem, file=sys.stderr)
    return result


def options_of(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> TranslateOptions:
    """The translation's settings from the flags and, for istiod's variables, the environment
    (the flag wins). ValueError names a variable whose value is not a boolean."""
    auto_allow = args.auto_allow_waypoint_policy
    if auto_allow is None:
        auto_allow = _env_bool(
            environ, AUTO_ALLOW_WAYPOINT_POLICY_ENV, DEFAULT_AUTO_ALLOW_WAYPOINT_POLICY
        )
    return TranslateOptions(
        cluster_id=args.cluster_id,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        auto_allow_waypoint_policy=auto_allow,
    )


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean as istiod reads one (Go's strconv.ParseBool); istiod falls back to the
    default on anything else, we refuse it."""
    value = environ.get(name)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={value!r}: expected true or false (1, t, true, 0, f, false)")


def print_config(args: argparse.Namespace) -> int:
    """`ambient-fast config`: the resources, by type URL and name, as the server pushes them."""
    try:
        options = options_of(args)
        result = load_model(args)
    except ValueError as e:
        print(f"config: {e}", file=sys.stderr)
        return 2
    translation = translate(result.mesh, options)
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
