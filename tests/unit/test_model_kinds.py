"""Each kind parses into its typed object with Kubernetes/Istio/Gateway API defaults applied."""

from __future__ import annotations

import pytest
from model_helpers import load, only

from ambient_fast.controlplane.model import (
    AuthorizationPolicy,
    ContainerPort,
    Deployment,
    DestinationRule,
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Namespace,
    ObjectKey,
    ParentRef,
    PeerAuthentication,
    Pod,
    RequestAuthentication,
    Service,
    ServiceAccount,
    ServiceEntry,
    ServicePort,
    WorkloadEntry,
)
from ambient_fast.controlplane.model.gateway_api import (
    BackendRef,
    HeaderFilter,
    HTTPRouteMatch,
    MirrorFilter,
    OtherFilter,
    PathMatch,
    PathModifier,
    RedirectFilter,
    URLRewriteFilter,
    ValueMatch,
)
from ambient_fast.controlplane.model.security import (
    AuthorizationRule,
    Condition,
    Operation,
    PolicyTargetRef,
    Source,
)


def test_namespace_keeps_labels_and_annotations() -> None:
    ns = only("""
        apiVersion: v1
        kind: Namespace
        metadata:
          name: bookinfo
          labels: {istio.io/dataplane-mode: ambient}
          annotations: {owner: team-a}
    """)
    assert isinstance(ns, Namespace)
    assert ns.key == ObjectKey("Namespace", "", "bookinfo")
    assert ns.labels == {"istio.io/dataplane-mode": "ambient"}
    assert ns.meta.annotations == {"owner": "team-a"}


def test_pod_defaults_namespace_and_service_account() -> None:
    pod = only("""
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        spec:
          containers:
          - name: web
            ports:
            - {name: http, containerPort: 8080}
            - {containerPort: 53, protocol: UDP}
    """)
    assert isinstance(pod, Pod)
    assert (pod.namespace, pod.service_account, pod.node_name, pod.ip) == (
        "default",
        "default",
        None,
        None,
    )
    assert pod.ports == (ContainerPort(8080, "http"), ContainerPort(53, None, "UDP"))
    assert pod.container_port("http") == 8080
    assert pod.container_port("grpc") is None
    assert pod.ready and pod.phase == "Running"


def test_pod_status_node_and_addresses_are_kept() -> None:
    pod = only("""
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: shop, labels: {app: web}}
        spec: {nodeName: node-b, serviceAccountName: web, hostNetwork: false}
        status:
          podIP: 10.244.2.9
          podIPs: [{ip: 10.244.2.9}, {ip: "fd00::9"}]
          phase: Running
          conditions: [{type: Ready, status: "False"}]
    """)
    assert isinstance(pod, Pod)
    assert pod.node_name == "node-b" and pod.service_account == "web"
    assert pod.ips == ("10.244.2.9", "fd00::9") and pod.ip == "10.244.2.9"
    assert not pod.ready


def test_deprecated_service_account_spelling() -> None:
    pod = only("""
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        spec: {serviceAccount: legacy}
    """)
    assert isinstance(pod, Pod) and pod.service_account == "legacy"


def test_deployment_keeps_template() -> None:
    deployment = only("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: shop}
        spec:
          replicas: 0
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web, version: v2}, annotations: {a: b}}
            spec: {serviceAccountName: web-sa}
    """)
    assert isinstance(deployment, Deployment)
    assert deployment.replicas == 0
    assert deployment.selector == {"app": "web"}
    assert deployment.template.labels == {"app": "web", "version": "v2"}
    assert deployment.template.spec.service_account == "web-sa"


def test_service_ports_target_ports_and_selector() -> None:
    service = only("""
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
        spec:
          selector: {app: web}
          ports:
          - {name: http, port: 80, targetPort: http, appProtocol: http}
          - {name: grpc, port: 7070, targetPort: 17070, appProtocol: grpc}
          - {name: dns, port: 53, protocol: UDP}
          - {name: quoted, port: 81, targetPort: "8081"}
    """)
    assert isinstance(service, Service)
    assert service.ports == (
        ServicePort(80, "http", "http", "TCP", "http"),
        ServicePort(7070, 17070, "grpc", "TCP", "grpc"),
        ServicePort(53, 53, "dns", "UDP"),
        ServicePort(81, 8081, "quoted"),
    )
    assert service.selector == {"app": "web"}
    assert service.cluster_ip is None and not service.headless
    assert service.labels["istio.io/use-waypoint"] == "wp"
    assert service.port_named("grpc") == service.ports[1]


def test_service_explicit_headless_and_selectorless() -> None:
    result = load("""
        apiVersion: v1
        kind: Service
        metadata: {name: fixed}
        spec: {clusterIP: 10.96.5.5, ports: [{port: 80}], selector: {app: a}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: headless}
        spec: {clusterIP: None, ports: [{port: 80}], selector: {app: a}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: external}
        spec: {ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: alias}
        spec: {type: ExternalName, externalName: db.example.com}
    """)
    assert result.report.ok, result.report
    mesh = result.mesh
    fixed, headless = mesh.service("default", "fixed"), mesh.service("default", "headless")
    external, alias = mesh.service("default", "external"), mesh.service("default", "alias")
    assert fixed and headless and external and alias
    assert fixed.cluster_ip == "10.96.5.5" and not fixed.placed
    assert headless.headless and headless.cluster_ip is None
    assert external.selector is None and external.cluster_ip is not None  # still gets a VIP
    assert alias.external_name == "db.example.com" and alias.cluster_ip is None


def test_service_account() -> None:
    account = only("""
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: reviews, namespace: bookinfo}
    """)
    assert isinstance(account, ServiceAccount)
    assert account.key == ObjectKey("ServiceAccount", "bookinfo", "reviews")


def test_waypoint_gateway_and_class() -> None:
    gateway = only("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata:
          name: waypoint
          namespace: bookinfo
          labels: {istio.io/waypoint-for: all}
        spec:
          gatewayClassName: istio-waypoint
          listeners: [{name: mesh, port: 15008, protocol: HBONE}]
          addresses: [{value: 10.96.0.99}, {type: Hostname, value: wp.example}]
    """)
    assert isinstance(gateway, Gateway)
    assert gateway.is_waypoint
    assert gateway.labels["istio.io/waypoint-for"] == "all"
    assert [(lst.name, lst.port, lst.protocol) for lst in gateway.listeners] == [
        ("mesh", 15008, "HBONE")
    ]
    assert [(a.type, a.value) for a in gateway.addresses] == [
        ("IPAddress", "10.96.0.99"),
        ("Hostname", "wp.example"),
    ]
    gateway_class = only("""
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: GatewayClass
        metadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: service}}
        spec: {controllerName: istio.io/mesh-controller}
    """)
    assert isinstance(gateway_class, GatewayClass)
    assert gateway_class.key == ObjectKey("GatewayClass", "", "istio-waypoint")
    assert gateway_class.controller_name == "istio.io/mesh-controller"


def test_http_route_rules_keep_their_structure() -> None:
    route = only("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: reviews, namespace: bookinfo}
        spec:
          parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
          hostnames: [reviews.example]
          rules:
          - name: canary
            matches:
            - path: {type: Exact, value: /v2}
              headers: [{name: end-user, value: jason}]
              queryParams: [{name: q, type: RegularExpression, value: "^a+$"}]
              method: POST
            - headers: [{name: x, value: y}]
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                set: [{name: X-Set, value: "1"}]
                add: [{name: X-Add, value: "2"}]
                remove: [X-Gone]
            - type: RequestMirror
              requestMirror: {backendRef: {name: shadow, port: 80}, percent: 10}
            - type: CORS
              cors: {allowOrigins: ["*"]}
            backendRefs:
            - {name: reviews-v2, port: 9080, weight: 3}
            - {name: reviews-v3, namespace: other, port: 9080, weight: 0}
            timeouts: {request: 1m30s, backendRequest: 500ms}
            retry: {attempts: 3, codes: [503], backoff: 100ms}
          - filters:
            - type: RequestRedirect
              requestRedirect:
                scheme: https
                statusCode: 308
                path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
            - type: URLRewrite
              urlRewrite: {hostname: h.example, path: {type: ReplaceFullPath, replaceFullPath: /x}}
    """)
    assert isinstance(route, HTTPRoute)
    assert route.parent_refs == (ParentRef("reviews", "", "Service", None, None, 9080),)
    assert route.parent_refs[0].is_service
    assert route.hostnames == ("reviews.example",)
    first, second = route.rules
    assert first.name == "canary"
    assert first.matches == (
        HTTPRouteMatch(
            path=PathMatch("Exact", "/v2"),
            headers=(ValueMatch("end-user", "jason"),),
            query_params=(ValueMatch("q", "^a+$", "RegularExpression"),),
            method="POST",
        ),
        # a match without a path matches every path (Gateway API default)
        HTTPRouteMatch(path=PathMatch("PathPrefix", "/"), headers=(ValueMatch("x", "y"),)),
    )
    header, mirror, cors = first.filters
    assert header == HeaderFilter(
        "RequestHeaderModifier", set=(("X-Set", "1"),), add=(("X-Add", "2"),), remove=("X-Gone",)
    )
    assert isinstance(mirror, MirrorFilter)
    assert mirror.backend_ref == BackendRef("shadow", port=80) and mirror.percent == 10
    assert isinstance(cors, OtherFilter) and cors.type == "CORS"
    assert first.backend_refs == (
        BackendRef("reviews-v2", port=9080, weight=3),
        BackendRef("reviews-v3", namespace="other", port=9080, weight=0),
    )
    assert first.timeouts is not None
    assert (first.timeouts.request, first.timeouts.backend_request) == (90.0, 0.5)
    assert first.retry is not None and first.retry.codes == (503,) and first.retry.backoff == 0.1
    redirect, rewrite = second.filters
    assert redirect == RedirectFilter(
        scheme="https", status_code=308, path=PathModifier("ReplacePrefixMatch", "/new")
    )
    assert rewrite == URLRewriteFilter("h.example", PathModifier("ReplaceFullPath", "/x"))
    assert second.matches == (HTTPRouteMatch(),)  # default: PathPrefix /
    assert second.backend_refs == ()


def test_http_route_defaults_parent_ref_to_gateway_and_redirect_to_302() -> None:
    route = only("""
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: HTTPRoute
        metadata: {name: r}
        spec:
          parentRefs: [{name: ingress, sectionName: http}]
          rules: [{filters: [{type: RequestRedirect, requestRedirect: {hostname: x}}]}]
    """)
    assert isinstance(route, HTTPRoute)
    ref = route.parent_refs[0]
    assert (ref.group, ref.kind, ref.section_name, ref.is_service) == (
        "gateway.networking.k8s.io",
        "Gateway",
        "http",
        False,
    )
    redirect = route.rules[0].filters[0]
    assert isinstance(redirect, RedirectFilter) and redirect.status_code == 302


def test_grpc_route() -> None:
    route = only("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: g, namespace: ns}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
          rules:
          - matches:
            - method: {service: grpc.testing.TestService, method: UnaryCall}
              headers: [{name: x-variant, value: canary}]
            filters:
            - type: ResponseHeaderModifier
              responseHeaderModifier: {remove: [grpc-debug]}
            backendRefs: [{name: echo-v2, port: 7070}]
          - backendRefs: [{name: echo-v1, port: 7070, weight: 70}]
    """)
    assert isinstance(route, GRPCRoute)
    first, second = route.rules
    method = first.matches[0].method
    assert method is not None
    assert (method.type, method.service, method.method) == (
        "Exact",
        "grpc.testing.TestService",
        "UnaryCall",
    )
    assert first.matches[0].headers == (ValueMatch("x-variant", "canary"),)
    assert first.filters == (HeaderFilter("ResponseHeaderModifier", remove=("grpc-debug",)),)
    assert second.matches == () and second.backend_refs[0].weight == 70


def test_authorization_policy_rules_from_to_when() -> None:
    policy = only("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: p
          namespace: ns
          annotations: {istio.io/dry-run: "true"}
        spec:
          selector: {matchLabels: {app: web}}
          action: DENY
          rules:
          - from:
            - source:
                principals: [cluster.local/ns/a/sa/b]
                notNamespaces: [kube-system]
                ipBlocks: [10.0.0.0/8, 192.168.1.1]
            to:
            - operation: {ports: ["8080", 9090], methods: [GET], notPaths: [/admin*]}
            when:
            - {key: "request.headers[x-user]", values: [alice]}
          - {}
    """)
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.action == "DENY" and policy.dry_run
    assert policy.selector == {"app": "web"} and policy.target_refs == ()
    assert policy.rules == (
        AuthorizationRule(
            sources=(
                Source(
                    principals=("cluster.local/ns/a/sa/b",),
                    not_namespaces=("kube-system",),
                    ip_blocks=("10.0.0.0/8", "192.168.1.1"),
                ),
            ),
            operations=(Operation(ports=(8080, 9090), methods=("GET",), not_paths=("/admin*",)),),
            conditions=(Condition("request.headers[x-user]", values=("alice",)),),
        ),
        AuthorizationRule(),  # rules: [{}] matches everything
    )


@pytest.mark.parametrize(
    ("spec", "rules"),
    [
        pytest.param("{}", (), id="empty-spec-no-rules"),
        pytest.param("{rules: [{}]}", (AuthorizationRule(),), id="one-empty-rule"),
    ],
)
def test_authorization_policy_no_rules_differs_from_empty_rule(
    spec: str, rules: tuple[AuthorizationRule, ...]
) -> None:
    policy = only(f"""
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {{name: p}}
        spec: {spec}
    """)
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.action == "ALLOW" and policy.rules == rules and policy.selector is None
    assert not policy.dry_run


@pytest.mark.parametrize(("value", "dry_run"), [("True", True), ("1", True), ("false", False)])
def test_dry_run_annotation_reads_like_go_parse_bool(value: str, dry_run: bool) -> None:
    policy = only(f"""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: p, annotations: {{istio.io/dry-run: "{value}"}}}}
    """)
    assert isinstance(policy, AuthorizationPolicy) and policy.dry_run is dry_run


def test_authorization_policy_target_refs_and_custom_provider() -> None:
    policy = only("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: p, namespace: bookinfo}
        spec:
          targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
          targetRefs: [{kind: Service, group: "", name: reviews, namespace: bookinfo}]
          action: CUSTOM
          provider: {name: ext-authz}
          rules: [{to: [{operation: {paths: [/x]}}]}]
    """)
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.provider == "ext-authz"
    assert policy.target_refs == (
        PolicyTargetRef("Gateway", "waypoint", "gateway.networking.k8s.io"),
        PolicyTargetRef("Service", "reviews", "", "bookinfo"),
    )


def test_peer_authentication() -> None:
    policy = only("""
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: strict, namespace: istio-system}
        spec:
          selector: {matchLabels: {app: db}}
          mtls: {mode: STRICT}
          portLevelMtls: {5432: {mode: PERMISSIVE}, "8080": {mode: DISABLE}}
    """)
    assert isinstance(policy, PeerAuthentication)
    assert policy.mtls_mode == "STRICT"
    assert policy.port_level_mtls == {5432: "PERMISSIVE", 8080: "DISABLE"}
    unset = only("""
        apiVersion: security.istio.io/v1beta1
        kind: PeerAuthentication
        metadata: {name: default}
    """)
    assert isinstance(unset, PeerAuthentication)
    assert unset.mtls_mode == "UNSET" and unset.selector is None


def test_request_authentication() -> None:
    policy = only("""
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: jwt, namespace: bookinfo}
        spec:
          targetRefs: [{kind: Service, group: "", name: productpage}]
          jwtRules:
          - issuer: issuer-1
            audiences: [a, b]
            jwks: '{"keys": []}'
            fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
            fromParams: [token]
            outputPayloadToHeader: x-payload
            outputClaimToHeaders: [{header: x-sub, claim: sub}]
            forwardOriginalToken: true
    """)
    assert isinstance(policy, RequestAuthentication)
    (rule,) = policy.jwt_rules
    assert rule.issuer == "issuer-1" and rule.audiences == ("a", "b")
    assert rule.jwks == '{"keys": []}' and rule.jwks_uri is None
    assert [(h.name, h.prefix) for h in rule.from_headers] == [("x-jwt", "Bearer ")]
    assert rule.from_params == ("token",) and rule.output_payload_to_header == "x-payload"
    assert [(c.header, c.claim) for c in rule.output_claim_to_headers] == [("x-sub", "sub")]
    assert rule.forward_original_token


def test_destination_rule_load_balancer() -> None:
    rule = only("""
        apiVersion: networking.istio.io/v1alpha3
        kind: DestinationRule
        metadata: {name: ratings, namespace: bookinfo}
        spec:
          host: ratings.bookinfo.svc.cluster.local
          trafficPolicy:
            loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}
            connectionPool: {tcp: {maxConnections: 100}}
          subsets:
          - name: v1
            labels: {version: v1}
            trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
    """)
    assert isinstance(rule, DestinationRule)
    assert rule.host == "ratings.bookinfo.svc.cluster.local"
    assert rule.traffic_policy is not None and rule.traffic_policy.load_balancer is not None
    hashing = rule.traffic_policy.load_balancer.consistent_hash
    assert hashing is not None and hashing.http_cookie == "user"
    assert rule.traffic_policy.connection_pool == {"tcp": {"maxConnections": 100}}
    (subset,) = rule.subsets
    assert subset.labels == {"version": "v1"}
    assert subset.traffic_policy is not None and subset.traffic_policy.load_balancer is not None
    assert subset.traffic_policy.load_balancer.simple == "ROUND_ROBIN"


def test_service_entry_and_workload_entry() -> None:
    result = load("""
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: db, namespace: data}
        spec:
          hosts: [db.internal]
          addresses: [240.0.0.1, 240.1.0.0/16]
          ports: [{number: 5432, name: tcp-pg, protocol: TCP, targetPort: 15432}]
          location: MESH_INTERNAL
          resolution: STATIC
          endpoints:
          - {address: 10.0.0.5, ports: {tcp-pg: 6432}, labels: {zone: a}, weight: 3}
          - {network: remote, locality: us/east/1}
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: WorkloadEntry
        metadata: {name: vm, namespace: data, labels: {meta: yes-label}}
        spec:
          address: 192.168.1.20
          labels: {app: db}
          serviceAccount: db
          network: vm-net
          locality: eu/west
          weight: 2
          ports: {tcp-pg: 5433}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: data}
    """)
    assert result.report.ok, result.report
    entry = result.mesh.service_entry("data", "db")
    assert isinstance(entry, ServiceEntry)
    assert entry.hosts == ("db.internal",) and entry.addresses == ("240.0.0.1", "240.1.0.0/16")
    assert [(p.number, p.name, p.protocol, p.target_port) for p in entry.ports] == [
        (5432, "tcp-pg", "TCP", 15432)
    ]
    assert (entry.location, entry.resolution) == ("MESH_INTERNAL", "STATIC")
    first, second = entry.endpoints
    assert (first.address, first.ports, first.labels, first.weight) == (
        "10.0.0.5",
        {"tcp-pg": 6432},
        {"zone": "a"},
        3,
    )
    assert second.address is None and second.network == "remote"
    vm = result.mesh.workload_entry("data", "vm")
    assert isinstance(vm, WorkloadEntry)
    assert vm.address == "192.168.1.20" and vm.spec_labels == {"app": "db"}
    assert vm.labels == {"meta": "yes-label"}
    assert (vm.spec.service_account, vm.spec.network, vm.spec.locality, vm.spec.weight) == (
        "db",
        "vm-net",
        "eu/west",
        2,
    )


def test_list_kind_is_unwrapped() -> None:
    result = load("""
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: ServiceAccount, metadata: {name: a}}
        - {apiVersion: v1, kind: ServiceAccount, metadata: {name: b}}
    """)
    assert result.report.ok
    assert [a.name for a in result.mesh.service_accounts] == ["a", "b"]
    assert all(a.meta.origin.document == 1 for a in result.mesh.service_accounts)


@pytest.mark.parametrize(
    "api_version",
    ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
)
def test_every_listed_istio_networking_version_is_accepted(api_version: str) -> None:
    rule = only(f"""
        apiVersion: {api_version}
        kind: DestinationRule
        metadata: {{name: r}}
        spec: {{host: h}}
    """)
    assert isinstance(rule, DestinationRule)
