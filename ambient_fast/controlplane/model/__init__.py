"""The mesh model: the Kubernetes / Istio / Gateway API YAML users write, typed and indexed.

`load_paths` / `load_sources` give a `LoadResult`: an immutable `Mesh` (pods placed on
nodes with IPs, services with VIPs, lookups for the translation) and a `LoadReport` of
`ModelError`s (bad documents are reported and skipped). `ModelWatcher` reloads on change.
"""

from ambient_fast.controlplane.model.core import (
    ContainerPort,
    Deployment,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    ServicePort,
)
from ambient_fast.controlplane.model.gateway_api import (
    BackendRef,
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    ParentRef,
    Route,
)
from ambient_fast.controlplane.model.kinds import KINDS, MeshObject
from ambient_fast.controlplane.model.loader import (
    LoadResult,
    ParsedFile,
    assemble,
    load_paths,
    load_sources,
    parse_file,
)
from ambient_fast.controlplane.model.mesh import Mesh
from ambient_fast.controlplane.model.meta import ObjectKey, ObjectMeta, selector_matches
from ambient_fast.controlplane.model.networking import DestinationRule, ServiceEntry, WorkloadEntry
from ambient_fast.controlplane.model.placement import Allocations, Node, Topology
from ambient_fast.controlplane.model.report import LoadReport, ModelError, Origin, Severity
from ambient_fast.controlplane.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
)
from ambient_fast.controlplane.model.sources import SourceFile
from ambient_fast.controlplane.model.watch import LiveModel, ModelWatcher, Update

__all__ = [
    "KINDS",
    "Allocations",
    "AuthorizationPolicy",
    "BackendRef",
    "ContainerPort",
    "Deployment",
    "DestinationRule",
    "GRPCRoute",
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "LiveModel",
    "LoadReport",
    "LoadResult",
    "Mesh",
    "MeshObject",
    "ModelError",
    "ModelWatcher",
    "Namespace",
    "Node",
    "ObjectKey",
    "ObjectMeta",
    "Origin",
    "ParentRef",
    "ParsedFile",
    "PeerAuthentication",
    "Pod",
    "RequestAuthentication",
    "Route",
    "Service",
    "ServiceAccount",
    "ServiceEntry",
    "ServicePort",
    "Severity",
    "SourceFile",
    "Topology",
    "Update",
    "WorkloadEntry",
    "assemble",
    "load_paths",
    "load_sources",
    "parse_file",
    "selector_matches",
]
