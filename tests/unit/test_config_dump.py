"""/config_dump read the way `istioctl ztunnel-config ... -f dump.json` reads it.

The reference is istio/istio istioctl/pkg/writer/ztunnel/configdump at commit
d929cf5b80ce5267361fbe184136ed70b809a8ef (api.go with CertsDump.rootCerts,
ZtunnelWorkload.capacity and connection protocols; workload.go, services.go, policies.go and
certificates.go of that era; goldens from testdata/allsummary.txt and dump.json). A dump built
by our code (ztunnel's local YAML -> StateStore, a CertificateManager fed by a plug-in CA with an
intermediate, in-pod workload state) is decoded against the Go structs of api.go with Go's
encoding/json rules (a wrong JSON type fails the whole file there), and the summary tables are
rendered with a port of istioctl's code and compared with its goldens for the same inputs.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from test_ca_authority import intermediate

from ambient_fast.controlplane.ca import Authority
from ambient_fast.identity import Identity
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.manager import CertificateManager, CertificateUnavailable
from ambient_fast.metrics.server import parse_request_head
from ambient_fast.state import StateStore
from ambient_fast.state.local import LocalSource
from ambient_fast.state.local_format import parse_local_config
from ambient_fast.ztunnel.admin import AdminEndpoint
from ambient_fast.ztunnel.config import ProxyMode, WorkloadInfo, ZtunnelConfig
from ambient_fast.ztunnel.config_dump import workload_state_entry
from ambient_fast.ztunnel.connections import ConnectionEntry, ConnectionProtocol

# -- Go's encoding/json, for the types api.go uses -------------------------------------------


class GoError(AssertionError):
    """What json.Unmarshal would return: the dump cannot be read at all."""


_JSON_TYPES: dict[str, type] = {"string": str, "slice": list, "map": dict, "struct": dict}


@dataclass(frozen=True)
class Go:
    """A Go type as encoding/json fills it. `kind`: string, any, int<bits>/uint<bits>, slice,
    map (`key`: string or uint16), struct (`fields` by JSON name)."""

    kind: str
    elem: Go | None = None
    key: str = "string"
    fields: dict[str, Field] = field(default_factory=dict)

    def decode(self, value: object, path: str, *, check_read: bool = True) -> None:
        """Raises GoError where json.Unmarshal fails; `check_read`: also where a field istioctl
        reads is missing."""
        if value is None or self.kind == "any":
            return  # null leaves any Go value untouched
        json_type = _JSON_TYPES.get(self.kind)
        if not (isinstance(value, json_type) if json_type else _fits_int(value, self.kind)):
            raise GoError(f"{path}: cannot unmarshal {value!r} into Go value of type {self.kind}")
        if self.kind == "slice":
            assert self.elem is not None and isinstance(value, list)
            for i, item in enumerate(value):
                self.elem.decode(item, f"{path}[{i}]", check_read=check_read)
        elif self.kind == "map":
            assert self.elem is not None and isinstance(value, dict)
            for k, item in value.items():
                if self.key != "string" and not _fits_int(_go_int(k), self.key):
                    raise GoError(f"{path}: cannot unmarshal map key {k!r} into a {self.key}")
                self.elem.decode(item, f"{path}[{k!r}]", check_read=check_read)
        elif self.kind == "struct":
            assert isinstance(value, dict)
            self._decode_struct(value, path, check_read)

    def _decode_struct(self, value: dict[str, Any], path: str, check_read: bool) -> None:
        for name, spec in self.fields.items():
            # Go prefers the exact tag, then any case-insensitive match; unknown keys are ignored.
            key = (
                name
                if name in value
                else next((k for k in value if k.lower() == name.lower()), None)
            )
            if check_read and spec.read and value.get(name) is None:
                raise GoError(f"{path}.{name}: istioctl reads this field; it is missing")
            if key is not None:
                spec.type.decode(value[key], f"{path}.{name}", check_read=check_read)


@dataclass(frozen=True)
class Field:
    type: Go
    read: bool = False  # the summaries use it: it must be there, under exactly this name


def _go_int(text: str) -> object:
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else text


def _fits_int(value: object, kind: str) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False  # Go rejects 1.5, "1" and true for an integer
    bits = int(kind.removeprefix("u").removeprefix("int"))
    low, high = (0, 1 << bits) if kind.startswith("u") else (-(1 << bits - 1), 1 << bits - 1)
    return low <= value < high


STRING, ANY = Go("string"), Go("any")
UINT16, UINT32, INT = Go("uint16"), Go("uint32"), Go("int64")


def slice_of(elem: Go) -> Go:
    return Go("slice", elem)


def map_of(elem: Go, key: str = "string") -> Go:
    return Go("map", elem, key)


def struct(**fields: Go | Field) -> Go:
    return Go(
        "struct", fields={k: v if isinstance(v, Field) else Field(v) for k, v in fields.items()}
    )


def read(go: Go) -> Field:
    return Field(go, read=True)


# api.go at d929cf5 (field by field; `read`: used by workload/service/policy/certificate and
# connection summaries). Optional pointers are plain types here: null is fine for both.
GATEWAY = struct(destination=read(STRING))
WORKLOAD = struct(
    uid=read(STRING), workloadIps=read(slice_of(STRING)), waypoint=GATEWAY,
    networkGateway=GATEWAY, protocol=read(STRING), name=read(STRING), namespace=read(STRING),
    serviceAccount=STRING, workloadName=STRING, workloadType=STRING, canonicalName=STRING,
    canonicalRevision=STRING, clusterId=STRING, trustDomain=STRING,
    locality=struct(region=STRING, zone=STRING, subzone=STRING), node=read(STRING),
    network=STRING, status=read(STRING), hostname=read(STRING), capacity=UINT32,
    applicationTunnel=struct(protocol=STRING, port=UINT16),
    authorizationPolicies=slice_of(STRING),
)  # fmt: skip
SERVICE = struct(
    name=read(STRING), namespace=read(STRING), hostname=read(STRING),
    vips=read(slice_of(STRING)), ports=map_of(INT),
    loadBalancer=struct(mode=STRING, routingPreferences=slice_of(STRING), healthPolicy=STRING),
    waypoint=GATEWAY,
    endpoints=read(map_of(struct(
        workloadUid=read(STRING), service=STRING, address=STRING, port=map_of(UINT16, "uint16"),
    ))),
    subjectAltNames=slice_of(STRING), ipFamilies=STRING,
)  # fmt: skip
STRING_MATCH = struct(Exact=STRING, Suffix=STRING, Prefix=STRING, Presence=ANY)
ACCOUNT = struct(namespace=STRING, serviceAccount=STRING)
MATCH = struct(
    namespaces=slice_of(STRING_MATCH), notNamespaces=slice_of(STRING_MATCH),
    principals=slice_of(STRING_MATCH), notPrincipals=slice_of(STRING_MATCH),
    sourceIps=slice_of(STRING), notSourceIps=slice_of(STRING),
    destinationIps=slice_of(STRING), notDestinationIps=slice_of(STRING),
    destinationPorts=slice_of(UINT16), notDestinationPorts=slice_of(UINT16),
    serviceAccounts=slice_of(ACCOUNT), notServiceAccounts=slice_of(ACCOUNT),
)  # fmt: skip
POLICY = struct(
    name=read(STRING), namespace=read(STRING), scope=read(STRING), action=read(STRING),
    rules=slice_of(slice_of(slice_of(MATCH))),
)  # fmt: skip
CERT = struct(
    pem=STRING, serialNumber=read(STRING), validFrom=read(STRING), expirationTime=read(STRING)
)
CONNECTION = struct(src=STRING, originalDst=STRING, actualDst=STRING, protocol=STRING)
WORKLOAD_STATE = struct(
    state=STRING,
    connections=struct(inbound=slice_of(CONNECTION), outbound=slice_of(CONNECTION)),
    info=read(struct(name=read(STRING), namespace=read(STRING), trustDomain=STRING,
                     serviceAccount=STRING)),
)  # fmt: skip
DUMP = struct(
    workloads=read(slice_of(WORKLOAD)), services=read(slice_of(SERVICE)),
    policies=read(slice_of(POLICY)),
    certificates=read(slice_of(struct(
        identity=read(STRING), state=read(STRING), certChain=read(slice_of(CERT)),
        rootCerts=read(slice_of(CERT)),
    ))),
    workloadState=map_of(WORKLOAD_STATE),
)  # fmt: skip


# -- istioctl's summaries, ported ------------------------------------------------------------


def tabwriter(rows: list[list[str]], padding: int = 1) -> str:
    """Go's text/tabwriter (minwidth 0, pad ' ') for tables whose rows have the same cells."""
    widths = [max(len(row[i]) for row in rows) + padding for i in range(len(rows[0]) - 1)]
    return "".join(
        "".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + row[-1] + "\n"
        for row in rows
    )


def _waypoint_name(gateway: dict[str, Any] | None, services: list[dict[str, Any]]) -> str:
    if gateway is None:
        return "None"
    for svc in services:
        if f"{svc['namespace']}/{svc['hostname']}" == gateway["destination"]:
            return str(svc["name"])
        if gateway["destination"] in svc["vips"]:
            return str(svc["name"])
    return "NA"


def workload_summary(dump: dict[str, Any]) -> list[list[str]]:
    """workload.go PrintWorkloadSummary (no filter)."""
    workloads = sorted(
        dump["workloads"], key=lambda w: (f"{w['namespace']}.{w['name']}", w["node"])
    )
    rows = [["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]]
    for w in workloads:
        address = ",".join(w["workloadIps"]) or w["hostname"]
        waypoint = _waypoint_name(w.get("waypoint"), dump["services"])
        rows.append([w["namespace"], w["name"], address, w["node"], waypoint, w["protocol"]])
    return rows


def service_summary(dump: dict[str, Any]) -> list[list[str]]:
    """services.go PrintServiceSummary (no filter)."""
    by_uid = {w["uid"]: w for w in dump["workloads"]}
    services = sorted(dump["services"], key=lambda s: (s["namespace"], s["name"], s["hostname"]))
    rows = [["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"]]
    for s in services:
        ips = ",".join(vip.partition("/")[2] for vip in s["vips"])
        endpoints = s["endpoints"].values()
        healthy = sum(
            1
            for e in endpoints
            if e["workloadUid"] in by_uid and by_uid[e["workloadUid"]]["status"] == "Healthy"
        )
        waypoint = _waypoint_name(s.get("waypoint"), dump["services"])
        rows.append([s["namespace"], s["name"], ips, waypoint, f"{healthy}/{len(endpoints)}"])
    return rows


def connections_summary(dump: dict[str, Any]) -> list[list[str]]:
    """connections.go PrintConnectionsSummary (no filter, names looked up)."""
    names = {s["vips"][0].partition("/")[2]: s["hostname"] for s in dump["services"] if s["vips"]}
    for w in dump["workloads"]:
        if w["workloadIps"]:
            names[w["workloadIps"][0]] = f"{w['name']}.{w['namespace']}"

    def lookup(address: str) -> str:
        ip, _, port = address.rpartition(":")
        return f"{names[ip]}:{port}" if ip in names else address

    rows = [["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"]]
    states = sorted(
        dump["workloadState"].values(), key=lambda s: (s["info"]["namespace"], s["info"]["name"])
    )
    for state in states:
        name = f"{state['info']['name']}.{state['info']['namespace']}"
        connections = state.get("connections") or {}
        for c in connections.get("inbound") or []:
            rows.append([name, "Inbound", lookup(c["actualDst"]), lookup(c["src"]),
                         c["originalDst"] or "", c["protocol"]])  # fmt: skip
        for c in connections.get("outbound") or []:
            rows.append([name, "Outbound", lookup(c["src"]), lookup(c["actualDst"]),
                         lookup(c["originalDst"]), c["protocol"]])  # fmt: skip
    return rows


def policy_summary(dump: dict[str, Any]) -> list[list[str]]:
    """policies.go PrintPolicySummary (no filter)."""
    policies = sorted(dump["policies"], key=lambda p: (p["namespace"], p["name"]))
    rows = [["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]]
    rows += [[p["namespace"], p["name"], p["action"], p["scope"]] for p in policies]
    return rows


def _go_hex(decimal: str) -> str:
    # new(big.Int).SetString(s, 10) printed with %x; a failed parse leaves a nil *big.Int.
    return format(int(decimal), "x") if re.fullmatch(r"[+-]?\d+", decimal) else "<nil>"


def _valid(cert: dict[str, str], now: datetime.datetime) -> str:
    try:
        start = datetime.datetime.fromisoformat(cert["validFrom"])
        end = datetime.datetime.fromisoformat(cert["expirationTime"])
    except ValueError:
        return "false"  # Go logs the parse error and says false
    return "true" if start < now < end else "false"


def _cert_kind(i: int, chain_length: int, legacy: bool) -> str:
    """The i-th of certChain + rootCerts; `legacy`: no rootCerts, the root ends certChain."""
    if i == 0:
        return "Leaf"
    if i >= chain_length or (legacy and i == chain_length - 1):
        return "Root"
    return "Intermediate"


def certificate_summary(dump: dict[str, Any], now: datetime.datetime) -> list[list[str]]:
    """certificates.go PrintSecretSummary."""
    rows = [["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER",
             "NOT BEFORE"]]  # fmt: skip
    for secret in dump["certificates"]:
        state = "Unavailable" if "Unavailable" in secret["state"] else secret["state"]
        chain, roots = secret["certChain"], secret["rootCerts"]
        if not chain:
            rows.append([secret["identity"], "NA", state, "false", "NA", "NA", "NA"])
            continue
        for i, c in enumerate(chain + roots):
            rows.append([secret["identity"], _cert_kind(i, len(chain), not roots), state,
                         _valid(c, now), _go_hex(c["serialNumber"]),
                         c["expirationTime"] or "NA", c["validFrom"] or "NA"])  # fmt: skip
    return rows


# -- the dump under test: istioctl's bookinfo testdata, fed through our code -----------------

NODE2, NODE1, CONTROL = "ambient-worker2", "ambient-worker", "ambient-control-plane"
NS_WAYPOINT = "/10.96.65.117"  # the namespace waypoint's VIP, as in dump.json
PAGE_WAYPOINT = "bookinfo/bookinfo-productpage-istio-waypoint.bookinfo.svc.cluster.local"
WAYPOINT_PORTS = {15008: 15008, 15021: 15021}
# namespace, pod, IP, node, HBONE, waypoint, service account, workload, canonical name, service
PODS = [
    ("bookinfo", "bookinfo-productpage-istio-waypoint-5cdd6745d5-rc2gg", "10.244.2.59", NODE2,
     False, None, "bookinfo-productpage-istio-waypoint", "bookinfo-productpage-istio-waypoint",
     "bookinfo-productpage-istio-waypoint",
     ("bookinfo-productpage-istio-waypoint", WAYPOINT_PORTS)),
    ("bookinfo", "details-v1-698d88b-dqrbr", "10.244.2.51", NODE2, True, NS_WAYPOINT,
     "bookinfo-details", "details-v1", "details", ("details", {9080: 9080})),
    ("bookinfo", "namespace-istio-waypoint-d94944bf6-z89g2", "10.244.2.52", NODE2, False, None,
     "namespace-istio-waypoint", "namespace-istio-waypoint", "namespace-istio-waypoint",
     ("namespace-istio-waypoint", WAYPOINT_PORTS)),
    ("bookinfo", "productpage-v1-675fc69cf-jscn2", "10.244.2.53", NODE2, True, PAGE_WAYPOINT,
     "bookinfo-productpage", "productpage-v1", "productpage", ("productpage", {9080: 9080})),
    *(("bookinfo", pod, ip, NODE1, True, NS_WAYPOINT, "bookinfo-reviews", pod[:10], "reviews",
       ("reviews", {9080: 9080}))
      for pod, ip in (("reviews-v1-5b5d6494f4-qwjv4", "10.244.1.37"),
                      ("reviews-v2-5b667bcbf8-q5pn2", "10.244.1.38"),
                      ("reviews-v3-5b9bd44f4-7fff4", "10.244.1.39"))),
    ("default", "httpbin-7447985f87-t8hv7", "10.244.1.40", NODE1, False, None, "httpbin",
     "httpbin", "httpbin", ("httpbin", {8000: 80})),
    ("default", "sleep-7656cf8794-lxcmx", "10.244.2.58", NODE2, True, None, "sleep", "sleep",
     "sleep", ("sleep", {80: 80})),
    ("gateway-system", "gateway-api-admission-server-85985d48ff-5jcvd", "10.244.2.8", NODE2, False,
     None, "default", "gateway-api-admission-server", "gateway-api-admission-server",
     ("gateway-api-admission-server", {443: 8443})),
    ("local-path-storage", "local-path-provisioner-6f8956fb48-vvnpn", "10.244.0.4", CONTROL, False,
     None, "local-path-provisioner-service-account", "local-path-provisioner",
     "local-path-provisioner", None),
]  # fmt: skip
# namespace, name, VIP, ports
SERVICES = [
    ("bookinfo", "bookinfo-productpage-istio-waypoint", "10.96.71.36", WAYPOINT_PORTS),
    ("bookinfo", "details", "10.96.200.228", {9080: 9080}),
    ("bookinfo", "namespace-istio-waypoint", "10.96.65.117", WAYPOINT_PORTS),
    ("bookinfo", "productpage", "10.96.131.140", {9080: 9080}),
    ("bookinfo", "reviews", "10.96.74.131", {9080: 9080}),
    ("default", "httpbin", "10.96.26.108", {8000: 80}),
    ("default", "kubernetes", "10.96.0.1", {443: 6443}),
    ("default", "sleep", "10.96.30.20", {80: 80}),
    ("gateway-system", "gateway-api-admission-server", "10.96.115.16", {443: 8443}),
]
# dump.json's two policies, verbatim.
POLICIES: list[dict[str, Any]] = [
    {"action": "Allow", "name": "allow-nothing", "namespace": "default", "rules": [],
     "scope": "Namespace"},
    {"action": "Allow", "name": "allow-waypoint", "namespace": "default",
     "rules": [[[{"serviceAccounts": [{"namespace": "default", "serviceAccount": "waypoint"}]}]]],
     "scope": "WorkloadSelector"},
]  # fmt: skip
# dump.json's entry for details-v1 (its waypoint "port" is now ztunnel's "hboneMtlsPort").
DETAILS_IN_ZTUNNEL_DUMP = {
    "workloadIps": ["10.244.2.51"], "waypoint": {"destination": "/10.96.65.117"},
    "protocol": "HBONE", "uid": "Kubernetes//Pod/bookinfo/details-v1-698d88b-dqrbr",
    "name": "details-v1-698d88b-dqrbr", "namespace": "bookinfo", "trustDomain": "cluster.local",
    "serviceAccount": "bookinfo-details", "workloadName": "details-v1",
    "workloadType": "deployment", "canonicalName": "details", "canonicalRevision": "v1",
    "node": "ambient-worker2", "nativeTunnel": True, "status": "Healthy",
    "clusterId": "Kubernetes",
}  # fmt: skip

# testdata/allsummary.txt, the rows of the pods, services and policies above (whose widest
# cells are those of the whole golden, so the lines are istioctl's, byte for byte).
WORKLOAD_GOLDEN = """\
NAMESPACE          POD NAME                                             ADDRESS     NODE                  WAYPOINT                            PROTOCOL
bookinfo           bookinfo-productpage-istio-waypoint-5cdd6745d5-rc2gg 10.244.2.59 ambient-worker2       None                                TCP
bookinfo           details-v1-698d88b-dqrbr                             10.244.2.51 ambient-worker2       namespace-istio-waypoint            HBONE
bookinfo           namespace-istio-waypoint-d94944bf6-z89g2             10.244.2.52 ambient-worker2       None                                TCP
bookinfo           productpage-v1-675fc69cf-jscn2                       10.244.2.53 ambient-worker2       bookinfo-productpage-istio-waypoint HBONE
bookinfo           reviews-v1-5b5d6494f4-qwjv4                          10.244.1.37 ambient-worker        namespace-istio-waypoint            HBONE
bookinfo           reviews-v2-5b667bcbf8-q5pn2                          10.244.1.38 ambient-worker        namespace-istio-waypoint            HBONE
bookinfo           reviews-v3-5b9bd44f4-7fff4                           10.244.1.39 ambient-worker        namespace-istio-waypoint            HBONE
default            httpbin-7447985f87-t8hv7                             10.244.1.40 ambient-worker        None                                TCP
default            sleep-7656cf8794-lxcmx                               10.244.2.58 ambient-worker2       None                                HBONE
gateway-system     gateway-api-admission-server-85985d48ff-5jcvd        10.244.2.8  ambient-worker2       None                                TCP
local-path-storage local-path-provisioner-6f8956fb48-vvnpn              10.244.0.4  ambient-control-plane None                                TCP
"""  # noqa: E501
SERVICE_GOLDEN = """\
NAMESPACE      SERVICE NAME                        SERVICE VIP   WAYPOINT ENDPOINTS
bookinfo       bookinfo-productpage-istio-waypoint 10.96.71.36   None     1/1
bookinfo       details                             10.96.200.228 None     1/1
bookinfo       namespace-istio-waypoint            10.96.65.117  None     1/1
bookinfo       productpage                         10.96.131.140 None     1/1
bookinfo       reviews                             10.96.74.131  None     3/3
default        httpbin                             10.96.26.108  None     1/1
default        kubernetes                          10.96.0.1     None     0/0
default        sleep                               10.96.30.20   None     1/1
gateway-system gateway-api-admission-server        10.96.115.16  None     1/1
"""
POLICY_GOLDEN = """\
NAMESPACE POLICY NAME    ACTION SCOPE
default   allow-nothing  Allow  Namespace
default   allow-waypoint Allow  WorkloadSelector
"""


def host(namespace: str, name: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def local_config() -> dict[str, Any]:
    """ztunnel's local config format (what LOCAL_XDS_PATH reads) for PODS, SERVICES, POLICIES."""
    workloads = []
    for ns, pod, ip, node, hbone, waypoint, sa, name, canonical, service in PODS:
        workload: dict[str, Any] = {
            "uid": f"Kubernetes//Pod/{ns}/{pod}", "name": pod, "namespace": ns,
            "workloadIps": [ip], "node": node, "protocol": "HBONE" if hbone else "TCP",
            "nativeTunnel": hbone, "serviceAccount": sa, "workloadName": name,
            "canonicalName": canonical,
            "canonicalRevision": name.removeprefix(f"{canonical}-") if name != canonical
            else "latest",
            "network": "network3" if pod.startswith("reviews-v3") else "",
        }  # fmt: skip
        if waypoint is not None:
            workload["waypoint"] = {"destination": waypoint}
        if service is not None:
            workload["services"] = {f"{ns}/{host(ns, service[0])}": service[1]}
        workloads.append(workload)
    services = [
        {"name": name, "namespace": ns, "hostname": host(ns, name), "vips": [f"/{vip}"],
         "ports": ports}
        for ns, name, vip, ports in SERVICES
    ]  # fmt: skip
    return {"workloads": workloads, "services": services, "policies": list(POLICIES)}


def load(store: StateStore, config: dict[str, Any]) -> None:
    LocalSource(store).apply(parse_local_config(json.dumps(config)))  # JSON is YAML


DETAILS = Identity.of("bookinfo", "bookinfo-details")
PENDING = Identity.of("bookinfo", "bookinfo-productpage")
REFUSED = Identity.of("default", "sleep")


class PlugInCa:
    """istiod with a plug-in CA: leaf, intermediate, root. Never answers PENDING; answers
    REFUSED with a certificate for somebody else (which the manager must not use)."""

    def __init__(self) -> None:
        self.root = MeshCA.create()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = intermediate(self.root, key)
        self.authority = Authority(MeshCA(key, cert), [cert], [self.root.cert], "test plug-in")

    async def create_certificate(self, identity: Identity, csr_pem: str) -> list[str]:
        if identity == PENDING:
            await asyncio.Event().wait()
        public_key = x509.load_pem_x509_csr(csr_pem.encode()).public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        signed_for = DETAILS if identity == REFUSED else identity
        return self.authority.issue(public_key, signed_for, datetime.timedelta(hours=1))


@pytest.fixture
async def manager() -> AsyncIterator[CertificateManager]:
    ca = PlugInCa()
    async with CertificateManager(ca, ca.root.root_pem) as manager:
        await manager.certificate(DETAILS)
        with pytest.raises(CertificateUnavailable):
            await manager.certificate(REFUSED)
        manager.request(PENDING)
        yield manager


def fetch_dump(
    store: StateStore,
    manager: CertificateManager,
    details_connections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GET /config_dump from the admin endpoint, decoded as istioctl decodes it."""
    details = WorkloadInfo("bookinfo", "details-v1-698d88b-dqrbr", "bookinfo-details")
    pods = {
        "uid-details": workload_state_entry("Up", details, details_connections),
        "uid-sleep": workload_state_entry("Pending", WorkloadInfo("default", "sleep", "sleep")),
    }
    config = ZtunnelConfig(
        node_name=NODE2, proxy_mode=ProxyMode.DEDICATED,
        proxy_workload_info=WorkloadInfo("bookinfo", "details", "details"),
    )  # fmt: skip
    admin = AdminEndpoint(store, manager, config, lambda: None, lambda: pods)
    reply = admin(parse_request_head(b"GET /config_dump HTTP/1.1\r\n\r\n"))
    assert (reply.status, reply.content_type) == (200, "application/json")
    dump: dict[str, Any] = json.loads(reply.body)
    DUMP.decode(dump, "dump")
    return dump


@pytest.fixture
def store() -> StateStore:
    store = StateStore()
    load(store, local_config())
    return store


# -- tests -----------------------------------------------------------------------------------


def test_schema_catches_what_go_refuses() -> None:
    """The decoder is only worth something if it fails where Go fails."""
    for bad in (
        {"workloads": [{"workloadIps": "10.0.0.1"}]},  # a string where Go has a slice
        {"services": [{"endpoints": {"u": {"port": {"http": 80}}}}]},  # map[uint16] key
        {"policies": [{"rules": [[[{"sourceIps": [{"address": "CgAAAA==", "length": 8}]}]]]}]},
        {"certificates": [{"certChain": [{"serialNumber": 12}]}]},
        {"workloads": [{"capacity": -1}]},
        {"workloads": [{"capacity": 1.5}]},
    ):
        with pytest.raises(GoError, match="cannot unmarshal"):
            DUMP.decode(bad, "dump", check_read=False)
    with pytest.raises(GoError, match="certificates: istioctl reads"):
        DUMP.decode({"workloads": [], "services": [], "policies": []}, "dump")


async def test_summaries_match_istioctl_goldens(
    store: StateStore, manager: CertificateManager
) -> None:
    dump = fetch_dump(store, manager)
    assert tabwriter(workload_summary(dump)) == WORKLOAD_GOLDEN
    assert tabwriter(service_summary(dump)) == SERVICE_GOLDEN
    assert tabwriter(policy_summary(dump)) == POLICY_GOLDEN
    assert dump["policies"] == [{**p, "dryRun": False} for p in POLICIES]
    [details] = (w for w in dump["workloads"] if w["name"] == "details-v1-698d88b-dqrbr")
    assert {k: details[k] for k in DETAILS_IN_ZTUNNEL_DUMP} == {
        **DETAILS_IN_ZTUNNEL_DUMP,
        "waypoint": {"destination": "/10.96.65.117", "hboneMtlsPort": 15008},
    }
    settings = dump["config"]
    assert (settings["nodeName"], settings["proxyMode"], settings["adminPort"]) == (
        NODE2, "dedicated", 15000
    )  # fmt: skip
    assert settings["proxyWorkloadInfo"]["serviceAccount"] == "details"
    assert settings["tokenFile"] == "var/run/secrets/tokens/istio-token"
    assert dump["workloadState"]["uid-sleep"] == {
        "state": "Pending",
        "info": {"name": "sleep", "namespace": "default", "serviceAccount": "sleep"},
    }


async def test_connections_of_a_pod_read_as_istioctl_lists_them(
    store: StateStore, manager: CertificateManager
) -> None:
    sleep, details, reviews = "10.244.2.58", "10.244.2.51", "10.244.1.37"
    inbound = ConnectionEntry(f"{sleep}:41234", None, f"{details}:9080", ConnectionProtocol.HBONE)
    outbound = ConnectionEntry(
        f"{details}:50000", "10.96.74.131:9080", f"{reviews}:15008", ConnectionProtocol.HBONE
    )
    dump = fetch_dump(store, manager, {"inbound": [inbound.dump()], "outbound": [outbound.dump()]})
    assert dump["workloadState"]["uid-details"]["connections"]["inbound"] == [
        {"src": f"{sleep}:41234", "originalDst": None, "actualDst": f"{details}:9080",
         "protocol": "HBONE"}
    ]  # fmt: skip
    pod = "details-v1-698d88b-dqrbr.bookinfo"
    assert connections_summary(dump) == [
        ["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"],
        [pod, "Inbound", f"{pod}:9080", "sleep-7656cf8794-lxcmx.default:41234", "", "HBONE"],
        [pod, "Outbound", f"{pod}:50000", "reviews-v1-5b5d6494f4-qwjv4.bookinfo:15008",
         "reviews.bookinfo.svc.cluster.local:9080", "HBONE"],
    ]  # fmt: skip


async def test_certificate_summary_lists_leaf_intermediate_root_and_states(
    store: StateStore, manager: CertificateManager
) -> None:
    dump = fetch_dump(store, manager)
    now = datetime.datetime.now(datetime.UTC)
    current = manager.current(DETAILS)
    assert current is not None
    certs = x509.load_pem_x509_certificates(current.chain_pem + current.roots_pem)

    def row(kind: str, cert: x509.Certificate) -> list[str]:
        after, before = (
            t.strftime("%Y-%m-%dT%H:%M:%SZ")
            for t in (cert.not_valid_after_utc, cert.not_valid_before_utc)
        )
        return [str(DETAILS), kind, "Available", "true", f"{cert.serial_number:x}", after, before]

    assert certificate_summary(dump, now)[1:] == [
        row("Leaf", certs[0]),
        row("Intermediate", certs[1]),
        row("Root", certs[2]),
        [str(PENDING), "NA", "Initializing", "false", "NA", "NA", "NA"],
        [str(REFUSED), "NA", "Unavailable", "false", "NA", "NA", "NA"],
    ]
    [refused] = (c for c in dump["certificates"] if c["identity"] == str(REFUSED))
    assert refused["state"].startswith("Unavailable: rejected the CA's answer")


async def test_service_waypoint_and_unhealthy_endpoints(
    store: StateStore, manager: CertificateManager
) -> None:
    """As ztunnel: unhealthy workloads are endpoints only of ALLOW_ALL services."""
    config = local_config()
    for ns, name, health in (
        ("bookinfo", "ratings", "OnlyHealthy"),
        ("default", "ratings", "AllowAll"),
    ):
        config["services"].append(
            {"name": name, "namespace": ns, "hostname": host(ns, name), "vips": [],
             "ports": {9080: 9080}, "waypoint": {"destination": PAGE_WAYPOINT},
             "loadBalancer": {"healthPolicy": health, "mode": "Failover",
                              "routingPreferences": ["Network", "Zone"]},
             "ipFamilies": "IPv4"}
        )  # fmt: skip
        for pod, status in (("ratings-v1-a", "Healthy"), ("ratings-v1-b", "Unhealthy")):
            config["workloads"].append(
                {"uid": f"Kubernetes//Pod/{ns}/{pod}", "name": pod, "namespace": ns,
                 "workloadIps": [], "hostname": f"{pod}.example", "status": status,
                 "locality": {"region": "eu", "zone": "eu-1"},
                 "applicationTunnel": {"protocol": "PROXY", "port": 15088},
                 "services": {f"{ns}/{host(ns, name)}": {9080: 9080}}}
            )  # fmt: skip
    load(store, config)
    dump = fetch_dump(store, manager)
    rows = {(r[0], r[1]): r[2:] for r in service_summary(dump)}
    assert rows["bookinfo", "ratings"] == ["", "bookinfo-productpage-istio-waypoint", "1/1"]
    assert rows["default", "ratings"] == ["", "bookinfo-productpage-istio-waypoint", "1/2"]
    [svc] = (s for s in dump["services"] if s["namespace"] == "default" and s["name"] == "ratings")
    assert svc["loadBalancer"] == {
        "routingPreferences": ["Network", "Zone"], "mode": "Failover", "healthPolicy": "AllowAll"
    }  # fmt: skip
    assert svc["ipFamilies"] == "IPv4"
    workloads = {(r[0], r[1]): r[2:] for r in workload_summary(dump)}
    assert workloads["default", "ratings-v1-b"] == ["ratings-v1-b.example", "", "None", "TCP"]


async def test_policy_matches_in_ztunnel_form(
    store: StateStore, manager: CertificateManager
) -> None:
    config = local_config()
    match = {
        "namespaces": [{"Exact": "bookinfo"}], "notNamespaces": ["kube-*"],
        "principals": [{"Prefix": "cluster.local/ns/bookinfo/"}, "*"],
        "notPrincipals": [{"Suffix": "/sa/sleep"}],
        "serviceAccounts": [{"namespace": "default", "serviceAccount": "waypoint"}],
        "notServiceAccounts": [{"namespace": "default", "serviceAccount": "sleep"}],
        "sourceIps": ["10.0.0.0/8", "2001:db8::/32"], "notSourceIps": ["10.1.2.3"],
        "destinationIps": ["10.96.0.0/12"], "notDestinationIps": ["10.96.0.1/32"],
        "destinationPorts": [9080], "notDestinationPorts": [15021],
    }  # fmt: skip
    config["policies"].append(
        {"name": "deny-most", "namespace": "bookinfo", "scope": "Global", "action": "Deny",
         "dryRun": True, "rules": [[[match], []]]}
    )  # fmt: skip
    load(store, config)
    dump = fetch_dump(store, manager)
    [policy] = (p for p in dump["policies"] if p["name"] == "deny-most")
    assert policy == {
        "name": "deny-most", "namespace": "bookinfo", "scope": "Global", "action": "Deny",
        "dryRun": True,
        "rules": [[[{
            **match,
            "notNamespaces": [{"Prefix": "kube-"}],
            "principals": [{"Prefix": "cluster.local/ns/bookinfo/"}, {"Presence": []}],
            "sourceIps": ["10.0.0.0/8", "2001:db8::/32"], "notSourceIps": ["10.1.2.3/32"],
        }], []]],
    }  # fmt: skip
    assert ["bookinfo", "deny-most", "Deny", "Global"] in policy_summary(dump)
