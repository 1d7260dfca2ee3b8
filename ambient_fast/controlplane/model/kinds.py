"""The kinds the model knows: apiVersions accepted for each, scope, and its parser."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ambient_fast.controlplane.model.core import (
    Deployment,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    parse_deployment,
    parse_namespace,
    parse_pod,
    parse_service,
    parse_service_account,
)
from ambient_fast.controlplane.model.gateway_api import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    parse_gateway,
    parse_gateway_class,
    parse_grpc_route,
    parse_http_route,
)
from ambient_fast.controlplane.model.meta import ObjectMeta
from ambient_fast.controlplane.model.networking import (
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    parse_destination_rule,
    parse_service_entry,
    parse_workload_entry,
)
from ambient_fast.controlplane.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    parse_authorization_policy,
    parse_peer_authentication,
    parse_request_authentication,
)

MeshObject = (
    Namespace
    | Pod
    | Deployment
    | Service
    | ServiceAccount
    | Gateway
    | GatewayClass
    | HTTPRoute
    | GRPCRoute
    | AuthorizationPolicy
    | PeerAuthentication
    | RequestAuthentication
    | DestinationRule
    | ServiceEntry
    | WorkloadEntry
)

# The kinds with a `source` (the document as written), kept where KindSpec.keep_source.
SourceKeeping = AuthorizationPolicy | RequestAuthentication | HTTPRoute | GRPCRoute


def may_reach_waypoints(obj: SourceKeeping) -> bool:
    """Whether a waypoint may receive the object's document: routes (by their parentRefs) and
    policies with targetRefs; selector and namespace-wide policies never reach one."""
    if isinstance(obj, AuthorizationPolicy | RequestAuthentication):
        return bool(obj.target_refs)
    return True


CORE = ("v1",)
APPS = ("apps/v1",)
ISTIO_NETWORKING = tuple(f"networking.istio.io/{v}" for v in ("v1", "v1beta1", "v1alpha3"))
ISTIO_SECURITY = tuple(f"security.istio.io/{v}" for v in ("v1", "v1beta1"))
GATEWAY_API = tuple(f"gateway.networking.k8s.io/{v}" for v in ("v1", "v1beta1", "v1alpha2"))


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str
    api_versions: tuple[str, ...]
    namespaced: bool
    parse: Callable[[Mapping[str, Any], ObjectMeta], MeshObject]
    # The loader keeps the document as written on the object (`source`) when it may reach a
    # waypoint (`may_reach_waypoints`): the kinds a waypoint receives as documents and parses
    # itself. Off for the rest (memory).
    keep_source: bool = False


KINDS: Mapping[str, KindSpec] = {
    spec.kind: spec
    for spec in (
        KindSpec("Namespace", CORE, False, parse_namespace),
        KindSpec("Pod", CORE, True, parse_pod),
        KindSpec("Service", CORE, True, parse_service),
        KindSpec("ServiceAccount", CORE, True, parse_service_account),
        KindSpec("Deployment", APPS, True, parse_deployment),
        KindSpec("Gateway", GATEWAY_API, True, parse_gateway),
        KindSpec("GatewayClass", GATEWAY_API, False, parse_gateway_class),
        KindSpec("HTTPRoute", GATEWAY_API, True, parse_http_route, keep_source=True),
        KindSpec("GRPCRoute", GATEWAY_API, True, parse_grpc_route, keep_source=True),
        KindSpec(
            "AuthorizationPolicy",
            ISTIO_SECURITY,
            True,
            parse_authorization_policy,
            keep_source=True,
        ),
        KindSpec("PeerAuthentication", ISTIO_SECURITY, True, parse_peer_authentication),
        KindSpec(
            "RequestAuthentication",
            ISTIO_SECURITY,
            True,
            parse_request_authentication,
            keep_source=True,
        ),
        KindSpec("DestinationRule", ISTIO_NETWORKING, True, parse_destination_rule),
        KindSpec("ServiceEntry", ISTIO_NETWORKING, True, parse_service_entry),
        KindSpec("WorkloadEntry", ISTIO_NETWORKING, True, parse_workload_entry),
    )
}
