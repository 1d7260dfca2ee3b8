"""Bad input is reported (file, doc, kind, namespace/name, field) and skipped; the rest loads."""

from __future__ import annotations

import textwrap

import pytest
from model_helpers import errors, load

from ambient_fast.controlplane.model import (
    ModelError,
    Severity,
    SourceFile,
    load_sources,
    parse_file,
)

SERVICE_OK = """
apiVersion: v1
kind: Service
metadata: {name: ok}
spec: {ports: [{port: 80}]}
"""


def test_report_names_file_document_kind_object_and_field() -> None:
    result = load("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: web, namespace: shop}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
          - {name: a, port: 80}
          - {name: b, port: http}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api}
        spec: {ports: [{port: 8080}]}
    """)
    assert result.report.lines() == [
        "mesh.yaml doc 3 Service default/web: spec.ports[1].port: expected an integer 1-65535, "
        'got "http"'
    ]
    (error,) = result.report.errors
    assert (error.path, error.document, error.line, error.kind) == ("mesh.yaml", 3, 10, "Service")
    assert (error.namespace, error.name, error.field) == ("default", "web", "spec.ports[1].port")
    # the rest loads
    assert result.mesh.service("default", "web") is None
    assert result.mesh.service("default", "api") is not None
    assert result.mesh.service_account("shop", "web") is not None


def _doc(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


CASES = [
    # -- every document -------------------------------------------------------------------
    ("kind: Pod\nmetadata: {name: p}", "mesh.yaml doc 1 Pod default/p: apiVersion: required"),
    ("apiVersion: v1\nmetadata: {name: p}", "mesh.yaml doc 1 p: kind: required"),
    ("- a\n- b", "mesh.yaml doc 1: expected a mapping, got a list"),
    ("just text", 'mesh.yaml doc 1: expected a mapping, got "just text"'),
    (
        "apiVersion: apps/v1beta1\nkind: Deployment\nmetadata: {name: d}",
        "mesh.yaml doc 1 Deployment default/d: apiVersion: expected one of apps/v1, "
        'got "apps/v1beta1"',
    ),
    (
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}",
        "mesh.yaml doc 1 PeerAuthentication default/p: apiVersion: expected one of "
        'security.istio.io/v1, security.istio.io/v1beta1, got "security.istio.io/v1alpha1"',
    ),
    ("apiVersion: v1\nkind: Pod\nmetadata: {}", "mesh.yaml doc 1 Pod: metadata.name: required"),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Web}",
        "mesh.yaml doc 1 Pod default/Web: metadata.name: expected a DNS-1123 subdomain "
        "(lower case a-z, 0-9, '-'), got \"Web\"",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {version: 2}}",
        "mesh.yaml doc 1 Pod default/web: metadata.labels.version: expected a string value, got 2",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: Shop}",
        "mesh.yaml doc 1 Pod Shop/web: metadata.namespace: expected a DNS-1123 label "
        "(lower case a-z, 0-9, '-'), got \"Shop\"",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: []",
        "mesh.yaml doc 1 Pod default/web: spec: expected a mapping, got a list",
    ),
    # -- Pod, Deployment ----------------------------------------------------------------------
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nstatus: {podIP: 10.0.0.300}",
        'mesh.yaml doc 1 Pod default/web: status.podIP: expected an IP address, got "10.0.0.300"',
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n"
        "spec: {containers: [{name: c, ports: [{containerPort: 0}]}]}",
        "mesh.yaml doc 1 Pod default/web: spec.containers[0].ports[0].containerPort: "
        "expected an integer 1-65535, got 0",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {hostNetwork: 'yes'}",
        'mesh.yaml doc 1 Pod default/web: spec.hostNetwork: expected true or false, got "yes"',
    ),
    (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {selector: {matchLabels: {app: a}}, template: {metadata: {labels: {app: b}}}}",
        "mesh.yaml doc 1 Deployment default/d: spec.template.metadata.labels: "
        "do not match spec.selector",
    ),
    (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}",
        "mesh.yaml doc 1 Deployment default/d: spec.selector: required",
    ),
    (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {replicas: -1, selector: {matchLabels: {app: a}}}",
        "mesh.yaml doc 1 Deployment default/d: spec.replicas: expected an integer 0-100000, got -1",
    ),
    # -- Service ------------------------------------------------------------------------------
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}",
        "mesh.yaml doc 1 Service default/s: spec.ports[0].port: expected an integer 1-65535, "
        "got 70000",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
        "spec: {ports: [{name: a, port: 80}, {port: 81}]}",
        "mesh.yaml doc 1 Service default/s: spec.ports[1].name: required when a service has "
        "more than one port",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
        "spec: {ports: [{name: a, port: 80}, {name: b, port: 80}]}",
        "mesh.yaml doc 1 Service default/s: spec.ports[1].port: 80/TCP already declared by "
        "spec.ports[0]",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
        "spec: {ports: [{name: a, port: 80}, {name: a, port: 81}]}",
        "mesh.yaml doc 1 Service default/s: spec.ports[1].name: duplicate port name 'a'",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
        "spec: {ports: [{port: 80, protocol: HTTP}]}",
        "mesh.yaml doc 1 Service default/s: spec.ports[0].protocol: expected one of TCP, UDP, "
        'SCTP, got "HTTP"',
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
        "spec: {ports: [{port: 80, targetPort: 0}]}",
        "mesh.yaml doc 1 Service default/s: spec.ports[0].targetPort: expected an integer "
        "1-65535, got 0",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: ten}",
        'mesh.yaml doc 1 Service default/s: spec.clusterIP: expected an IP address, got "ten"',
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: Balanced}",
        "mesh.yaml doc 1 Service default/s: spec.type: expected one of ClusterIP, NodePort, "
        'LoadBalancer, ExternalName, got "Balanced"',
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: ExternalName}",
        "mesh.yaml doc 1 Service default/s: spec.externalName: required for type ExternalName",
    ),
    # -- Gateway API --------------------------------------------------------------------------
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
        "spec: {listeners: [{name: mesh, port: 15008, protocol: HBONE}]}",
        "mesh.yaml doc 1 Gateway default/g: spec.gatewayClassName: required",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
        "spec: {gatewayClassName: istio-waypoint}",
        "mesh.yaml doc 1 Gateway default/g: spec.listeners: required (at least one listener)",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
        "spec: {gatewayClassName: c, listeners: [{name: m, port: 1, protocol: HBONE}, "
        "{name: m, port: 2, protocol: HBONE}]}",
        "mesh.yaml doc 1 Gateway default/g: spec.listeners[1].name: duplicate listener name 'm'",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{matches: [{path: {type: PathPrefix, value: api}}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].matches[0].path.value: "
        "must start with \"/\", got 'api'",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{matches: [{path: {type: Prefix, value: /}}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].matches[0].path.type: expected one "
        'of Exact, PathPrefix, RegularExpression, got "Prefix"',
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{matches: [{method: FETCH}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].matches[0].method: "
        "unknown HTTP method 'FETCH'",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{backendRefs: [{name: b, weight: 1000001}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].backendRefs[0].weight: "
        "expected an integer 0-1000000, got 1000001",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{backendRefs: [{port: 80}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].backendRefs[0].name: required",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {parentRefs: [{kind: Service}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.parentRefs[0].name: required",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{filters: [{type: RequestRedirect}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].filters[0].requestRedirect: "
        "required for type RequestRedirect",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].filters[0].requestRedirect."
        "statusCode: expected one of 301, 302, 303, 307, 308, got 304",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{filters: [{type: RequestHeaderModifier, requestHeaderModifier: "
        "{set: [{name: 'bad header', value: x}]}}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].filters[0].requestHeaderModifier."
        "set[0].name: invalid header name 'bad header'",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{matches: [{headers: [{name: x, type: RegularExpression, "
        "value: '(['}]}]}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].matches[0].headers[0].value: "
        "invalid regular expression '([': unterminated character set at position 1",
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{timeouts: {request: 10 seconds}}]}",
        "mesh.yaml doc 1 HTTPRoute default/r: spec.rules[0].timeouts.request: expected a "
        'duration such as "10s", got "10 seconds"',
    ),
    (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: r}\n"
        "spec: {rules: [{matches: [{method: {type: Exact}}]}]}",
        "mesh.yaml doc 1 GRPCRoute default/r: spec.rules[0].matches[0].method: one of service "
        "or method is required",
    ),
    # -- security -----------------------------------------------------------------------------
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {action: REJECT}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.action: expected one of ALLOW, "
        'DENY, AUDIT, CUSTOM, got "REJECT"',
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {action: CUSTOM}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.provider: required for action CUSTOM",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {provider: {name: x}}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.provider: only allowed with action "
        "CUSTOM, not ALLOW",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: s}]}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.targetRefs: only one of selector "
        "or targetRef(s) may be set",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: a}\n"
        "spec: {targetRef: {kind: Service, name: s, namespace: b}}",
        "mesh.yaml doc 1 AuthorizationPolicy a/p: spec.targetRef.namespace: must be the "
        "policy's namespace 'a'",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {rules: [{from: [{source: {}}]}]}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.rules[0].from[0].source: "
        "must not be empty",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {rules: [{to: [{}]}]}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.rules[0].to[0].operation: required",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {rules: [{when: [{key: source.ip}]}]}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.rules[0].when[0]: one of values "
        "or notValues is required",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.rules[0].from[0].source."
        'ipBlocks[0]: expected an IP address or CIDR, got "10.0.0.0/33"',
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec: {rules: [{to: [{operation: {ports: [http]}}]}]}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: spec.rules[0].to[0].operation."
        'ports[0]: expected a port 0-65535, got "http"',
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, annotations: {istio.io/dry-run: 'yes'}}",
        "mesh.yaml doc 1 AuthorizationPolicy default/p: metadata.annotations.istio.io/dry-run: "
        'expected "true" or "false", got \'yes\'',
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec: {mtls: {mode: STRICTER}}",
        "mesh.yaml doc 1 PeerAuthentication default/p: spec.mtls.mode: expected one of UNSET, "
        'DISABLE, PERMISSIVE, STRICT, got "STRICTER"',
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec: {portLevelMtls: {8080: {mode: DISABLE}}}",
        "mesh.yaml doc 1 PeerAuthentication default/p: spec.portLevelMtls: requires spec.selector",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {http: {mode: DISABLE}}}",
        "mesh.yaml doc 1 PeerAuthentication default/p: spec.portLevelMtls.http: expected a "
        'port 1-65535 as key, got "http"',
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p}\n"
        "spec: {jwtRules: [{jwksUri: 'https://x'}]}",
        "mesh.yaml doc 1 RequestAuthentication default/p: spec.jwtRules[0].issuer: required",
    ),
    # -- Istio networking ---------------------------------------------------------------------
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {}",
        "mesh.yaml doc 1 DestinationRule default/d: spec.host: required",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n"
        "spec: {host: h, trafficPolicy: {loadBalancer: {simple: FASTEST}}}",
        "mesh.yaml doc 1 DestinationRule default/d: spec.trafficPolicy.loadBalancer.simple: "
        "expected one of UNSPECIFIED, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST, "
        'LEAST_CONN, got "FASTEST"',
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n"
        "spec: {host: h, trafficPolicy: {loadBalancer: {simple: RANDOM, "
        "consistentHash: {useSourceIp: true}}}}",
        "mesh.yaml doc 1 DestinationRule default/d: spec.trafficPolicy.loadBalancer: only one "
        "of simple or consistentHash may be set",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec: {}",
        "mesh.yaml doc 1 ServiceEntry default/e: spec.hosts: required (at least one host)",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\n"
        "spec: {hosts: [h], addresses: [nowhere]}",
        "mesh.yaml doc 1 ServiceEntry default/e: spec.addresses[0]: expected an IP address or "
        'CIDR, got "nowhere"',
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\n"
        "spec: {hosts: [h], endpoints: [{address: 1.1.1.1}], "
        "workloadSelector: {labels: {a: b}}}",
        "mesh.yaml doc 1 ServiceEntry default/e: spec.workloadSelector: only one of "
        "workloadSelector or endpoints",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\n"
        "spec: {hosts: [h], ports: [{number: 80, name: a}, {number: 80, name: b}]}",
        "mesh.yaml doc 1 ServiceEntry default/e: spec.ports[1].number: port 80 declared twice",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\n"
        "spec: {labels: {a: b}}",
        "mesh.yaml doc 1 WorkloadEntry default/w: spec.address: required unless network is set",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\n"
        "spec: {address: 'not an address'}",
        "mesh.yaml doc 1 WorkloadEntry default/w: spec.address: expected an IP address or "
        'hostname, got "not an address"',
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\n"
        "spec: {address: 1.2.3.4, ports: {http: 0}}",
        "mesh.yaml doc 1 WorkloadEntry default/w: spec.ports.http: expected an integer "
        "1-65535, got 0",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[1].split(": ")[1] for c in CASES])
def test_invalid_document_is_reported_and_skipped(text: str, expected: str) -> None:
    result = load(text + "\n---\n" + SERVICE_OK)
    assert result.report.lines() == [expected]
    assert result.report.errors[0].document == 1
    assert result.mesh.service("default", "ok") is not None  # the next document still loads


def test_list_items_are_named_by_their_path() -> None:
    assert errors("""
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: ServiceAccount, metadata: {name: a}}
        - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {ports: [{port: x}]}}
    """) == [
        "mesh.yaml doc 1 Service default/s: items[1].spec.ports[0].port: expected an integer "
        '1-65535, got "x"'
    ]


def test_yaml_syntax_error_names_file_and_line_and_fails_the_whole_file() -> None:
    broken = SourceFile("broken.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a\n")
    good = SourceFile("good.yaml", SERVICE_OK)
    result = load_sources([broken, good])
    (error,) = result.report.problems
    assert error.file_level and error.path == "broken.yaml" and error.line is not None
    assert str(error).startswith("broken.yaml:")
    assert "YAML syntax error" in str(error)
    assert result.mesh.service_accounts == ()
    assert result.mesh.service("default", "ok") is not None


def test_yaml_syntax_error_line_points_at_the_problem() -> None:
    text = "a: 1\n---\nb: 2\nc: [1, 2\nd: 3\n"
    parsed = parse_file(SourceFile("x.yaml", text))
    failure = parsed.failure
    assert failure is not None and parsed.objects == ()
    assert failure.line in (4, 5)  # libyaml reports where it noticed: the unclosed flow list
    assert str(failure) == f"x.yaml:{failure.line}: YAML syntax error: {failure.message[19:]}"


def test_unknown_kinds_warn_once_each_and_are_skipped() -> None:
    result = load("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a, namespace: ns1}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: cfg}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: b}
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: istio-ingress}
    """)
    assert result.report.ok  # warnings only
    assert result.report.lines() == [
        "warning: mesh.yaml doc 1 VirtualService ns1/a: unknown kind VirtualService "
        "(networking.istio.io/v1); skipped (2 documents)",
        "warning: mesh.yaml doc 2 ConfigMap cfg: unknown kind ConfigMap (v1); skipped",
        # Istio's own Gateway is not the Gateway API one
        "warning: mesh.yaml doc 4 Gateway istio-ingress: unknown kind Gateway "
        "(networking.istio.io/v1); skipped",
    ]
    assert len(result.mesh) == 0


def test_duplicate_object_names_both_places_and_keeps_the_first() -> None:
    first = SourceFile(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n",
    )
    second = SourceFile(
        "b.yaml",
        "---\napiVersion: v1\nkind: ServiceAccount\n"
        "metadata: {name: web}\n---\napiVersion: v1\nkind: Service\n"
        "metadata: {name: web, namespace: default}\nspec: {ports: [{port: 81}]}\n",
    )
    result = load_sources([first, second])
    assert result.report.lines() == [
        "b.yaml doc 2 Service default/web: duplicate of a.yaml doc 1; skipped"
    ]
    web = result.mesh.service("default", "web")
    assert web is not None and web.ports[0].port == 80
    assert result.mesh.service_account("default", "web") is not None  # other kind, same name


def test_undeclared_namespace_is_a_warning_once() -> None:
    result = load("""
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: a, namespace: shop}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: b, namespace: shop}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: c, namespace: kube-system}
    """)
    assert result.report.lines() == [
        "warning: mesh.yaml doc 1 ServiceAccount shop/a: metadata.namespace: namespace 'shop' "
        "has no Namespace document; it has no labels"
    ]
    assert result.mesh.namespace_labels("shop") == {}


def test_empty_documents_are_ignored() -> None:
    result = load("---\n---\n" + SERVICE_OK + "---\n")
    assert result.report.problems == () and len(result.mesh) == 1


def test_model_error_format_without_object_or_field() -> None:
    assert str(ModelError("m.yaml", "cannot read: Permission denied")) == (
        "m.yaml: cannot read: Permission denied"
    )
    assert str(ModelError("m.yaml", "bad", line=3)) == "m.yaml:3: bad"
    warning = ModelError(
        "m.yaml", "odd", document=2, kind="GatewayClass", name="c", severity=Severity.WARNING
    )
    assert str(warning) == "warning: m.yaml doc 2 GatewayClass c: odd"
    assert not warning.file_level
