"""What the DNS proxy answers from the mesh and what it forwards: istio/ztunnel's lookup table
(src/dns/server.rs tests) over a StateStore fed like the xDS client feeds it."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from ambient_fast.state import StateStore, Workload
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL
from ambient_fast.ztunnel.dns.message import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    Name,
    Record,
    name_from_text,
)
from ambient_fast.ztunnel.dns.resolver import (
    DEFAULT_TTL,
    Answer,
    DnsResolver,
    Forward,
    kubernetes_search_domains,
    static_search_domains,
    wildcards,
)

NW1 = "nw1"
TYPE_NS = 2


def kube(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def service(
    hostname: str,
    namespace: str,
    *vips: str,
    families: wpb.IPFamilies.ValueType = wpb.AUTOMATIC,
) -> wpb.Address:
    """`vips` as "network/ip"."""
    addresses = []
    for vip in vips:
        network, _, ip = vip.partition("/")
        addresses.append(
            wpb.NetworkAddress(network=network, address=ipaddress.ip_address(ip).packed)
        )
    return wpb.Address(
        service=wpb.Service(
            name=hostname.partition(".")[0],
            namespace=namespace,
            hostname=hostname,
            addresses=addresses,
            ports=[wpb.Port(service_port=80, target_port=80)],
            ip_families=families,
        )
    )


def workload(
    name: str, namespace: str, *ips: str, services: tuple[str, ...] = (), healthy: bool = True
) -> wpb.Address:
    return wpb.Address(
        workload=wpb.Workload(
            uid=f"Kubernetes//Pod/{namespace}/{name}",
            name=name,
            namespace=namespace,
            network=NW1,
            addresses=[ipaddress.ip_address(ip).packed for ip in ips],
            services={
                key: wpb.PortList(ports=[wpb.Port(service_port=80, target_port=80)])
                for key in services
            },
            status=wpb.HEALTHY if healthy else wpb.UNHEALTHY,
        )
    )


def mesh() -> StateStore:
    """ztunnel's test state: a client in ns1 on nw1 and the services its cases ask for."""
    services = [
        service("www.google.com", "ns1", "nw1/1.1.1.1"),
        service(kube("productpage", "ns1"), "ns1", "nw1/9.9.9.9"),
        service(kube("example", "ns2"), "ns2", "nw1/10.10.10.10"),
        service("everywhere.io", "ns2", "nw1/10.10.10.110"),
        service("everywhere.io", "ns1", "nw1/10.10.10.112"),
        service("elsewhere.io", "ns2", "nw1/10.10.10.120"),
        service("elsewhere.io", "ns3", "nw1/10.10.10.130"),
        service(
            "details.ns2.svc.cluster.remote",
            "ns2",
            *(f"nw1/{i}.{i}.{i}.{i}" for i in (11, 12, 13, 14)),
        ),
        service("ipv4.localhost", "ns1", "nw1/2.2.2.2"),
        service("ipv6.localhost", "ns1", "nw1/2001:db8::ff00:42:8329"),
        service("dual.localhost", "ns1", "nw1/2.2.2.2", "nw1/2001:db8::ff00:42:8329"),
        service("*.wildcard", "ns1", "nw1/10.10.10.10"),
        service("*.b.wildcard", "ns1", "nw1/11.11.11.11"),
        service("*.svc.mesh.company.net", "ns1", "nw1/10.1.2.3"),
        service(kube("nw2-only", "ns1"), "ns1", "nw2/20.20.20.20"),
        service(kube("both-networks", "ns1"), "ns1", "nw1/21.21.21.21", "nw2/22.22.22.22"),
        service(kube("headless", "ns1"), "ns1"),
        service("headless.example.com", "ns1"),
        service("headless-no-endpoints.example.com", "ns1"),
        service(kube("headless-ipv6", "ns1"), "ns1", families=wpb.IPV6_ONLY),
        service(kube("v4-only", "ns1"), "ns1", "nw1/23.23.23.23", families=wpb.IPV4_ONLY),
    ]
    workloads = [
        workload("client", "ns1", "192.168.0.10"),
        workload(
            "pod-0",
            "ns1",
            "30.30.30.30",
            "2001:db8::30",
            services=(f"ns1/{kube('headless', 'ns1')}",),
        ),
        workload(
            "pod-1",
            "ns1",
            "31.31.31.31",
            "2001:db8::31",
            services=(f"ns1/{kube('headless', 'ns1')}",),
        ),
        workload(
            "pod-sick",
            "ns1",
            "34.34.34.34",
            services=(f"ns1/{kube('headless', 'ns1')}",),
            healthy=False,
        ),
        workload("external", "ns1", "32.32.32.32", services=("ns1/headless.example.com",)),
        workload(
            "pod-2",
            "ns1",
            "33.33.33.33",
            "2001:db8::33",
            services=(f"ns1/{kube('headless-ipv6', 'ns1')}",),
        ),
    ]
    store = StateStore()
    upserts = {}
    for address in services:
        upserts[f"{address.service.namespace}/{address.service.hostname}"] = address
    for address in workloads:
        upserts[address.workload.uid] = address
    applied = store.apply(ADDRESS_TYPE_URL, upserts)
    assert not applied.rejected, applied.rejected
    return store


@pytest.fixture(scope="module")
def store() -> StateStore:
    return mesh()


@pytest.fixture(scope="module")
def resolver(store: StateStore) -> DnsResolver:
    return DnsResolver(
        store,
        cluster_domain="cluster.local",
        search_domains=kubernetes_search_domains("cluster.local"),
    )


@pytest.fixture(scope="module")
def client(store: StateStore) -> Workload:
    found = store.workload_by_uid("Kubernetes//Pod/ns1/client")
    assert found is not None and found.network == NW1
    return found


def n(text: str) -> Name:
    return name_from_text(text)


def a(name: str, ip: str) -> Record:
    return Record(n(name), TYPE_A, DEFAULT_TTL, ipaddress.IPv4Address(ip))


def aaaa(name: str, ip: str) -> Record:
    return Record(n(name), TYPE_AAAA, DEFAULT_TTL, ipaddress.IPv6Address(ip))


def cname(name: str, target: str) -> Record:
    return Record(n(name), TYPE_CNAME, DEFAULT_TTL, n(target))


FORWARD = None  # the expectation "forwarded upstream"

CASES: list[tuple[str, str, int, list[Record] | None]] = [
    ("unsupported record type", "productpage.ns1.", TYPE_NS, FORWARD),
    ("non-k8s host we know", "www.google.com", TYPE_A, [a("www.google.com", "1.1.1.1")]),
    ("non-k8s host with the search namespace: CNAME + A",
     "www.google.com.ns1.svc.cluster.local.", TYPE_A,
     [cname("www.google.com.ns1.svc.cluster.local", "www.google.com"),
      a("www.google.com", "1.1.1.1")]),
    ("unknown host", "www.bing.com", TYPE_A, FORWARD),
    ("k8s fqdn", "productpage.ns1.svc.cluster.local.", TYPE_A,
     [a("productpage.ns1.svc.cluster.local", "9.9.9.9")]),
    ("k8s name.namespace", "productpage.ns1.", TYPE_A, [a("productpage.ns1", "9.9.9.9")]),
    ("k8s short name", "productpage.", TYPE_A, [a("productpage", "9.9.9.9")]),
    ("k8s name.namespace.svc", "productpage.ns1.svc", TYPE_A,
     [a("productpage.ns1.svc", "9.9.9.9")]),
    ("name.namespace with the search namespace: CNAME + A",
     "productpage.ns1.ns1.svc.cluster.local.", TYPE_A,
     [cname("productpage.ns1.ns1.svc.cluster.local", "productpage.ns1"),
      a("productpage.ns1", "9.9.9.9")]),
    ("fqdn with the search namespace: CNAME + A",
     "productpage.ns1.svc.cluster.local.ns1.svc.cluster.local", TYPE_A,
     [cname("productpage.ns1.svc.cluster.local.ns1.svc.cluster.local",
            "productpage.ns1.svc.cluster.local"),
      a("productpage.ns1.svc.cluster.local", "9.9.9.9")]),
    ("AAAA for an IPv4 host through a search domain: no records",
     "productpage.ns1.ns1.svc.cluster.local.", TYPE_AAAA, []),
    ("other namespace, name.namespace", "example.ns2.", TYPE_A, [a("example.ns2", "10.10.10.10")]),
    ("other namespace, fqdn", "example.ns2.svc.cluster.local.", TYPE_A,
     [a("example.ns2.svc.cluster.local", "10.10.10.10")]),
    ("other namespace, name.namespace.svc", "example.ns2.svc.", TYPE_A,
     [a("example.ns2.svc", "10.10.10.10")]),
    ("other namespace, short name", "example.", TYPE_A, FORWARD),
    ("another cluster domain, fqdn", "details.ns2.svc.cluster.remote.", TYPE_A,
     [a("details.ns2.svc.cluster.remote", f"{i}.{i}.{i}.{i}") for i in (11, 12, 13, 14)]),
    ("another cluster domain, name.namespace", "details.ns2.", TYPE_A, FORWARD),
    ("A gets only the IPv4 VIPs", "dual.localhost.", TYPE_A, [a("dual.localhost", "2.2.2.2")]),
    ("AAAA gets only the IPv6 VIPs", "dual.localhost.", TYPE_AAAA,
     [aaaa("dual.localhost", "2001:db8::ff00:42:8329")]),
    ("A for an IPv6-only host: no records", "ipv6.localhost.", TYPE_A, []),
    ("AAAA for an IPv4-only host: no records", "ipv4.localhost.", TYPE_AAAA, []),
    ("wildcard", "foo.wildcard.", TYPE_A, [a("foo.wildcard", "10.10.10.10")]),
    ("the most specific wildcard", "a.b.wildcard.", TYPE_A, [a("a.b.wildcard", "11.11.11.11")]),
    ("wildcard with a domain", "foo.svc.mesh.company.net.", TYPE_A,
     [a("foo.svc.mesh.company.net", "10.1.2.3")]),
    ("wildcard with a namespace and a domain", "foo.foons.svc.mesh.company.net.", TYPE_A,
     [a("foo.foons.svc.mesh.company.net", "10.1.2.3")]),
    ("wildcard through a search domain: no CNAME",
     "foo.svc.mesh.company.net.ns1.svc.cluster.local.", TYPE_A,
     [a("foo.svc.mesh.company.net.ns1.svc.cluster.local", "10.1.2.3")]),
    ("no VIP on the client's network: no records", "nw2-only.ns1.svc.cluster.local.", TYPE_A, []),
    ("only the VIP on the client's network", "both-networks.ns1.svc.cluster.local.", TYPE_A,
     [a("both-networks.ns1.svc.cluster.local", "21.21.21.21")]),
    ("headless: healthy endpoints' IPv4", "headless.ns1.svc.cluster.local.", TYPE_A,
     [a("headless.ns1.svc.cluster.local", "30.30.30.30"),
      a("headless.ns1.svc.cluster.local", "31.31.31.31")]),
    ("headless: endpoints' IPv6", "headless.ns1.svc.cluster.local.", TYPE_AAAA,
     [aaaa("headless.ns1.svc.cluster.local", "2001:db8::30"),
      aaaa("headless.ns1.svc.cluster.local", "2001:db8::31")]),
    ("headless short name", "headless", TYPE_A,
     [a("headless", "30.30.30.30"), a("headless", "31.31.31.31")]),
    ("single-stack IPv6 headless: AAAA", "headless-ipv6.ns1.svc.cluster.local.", TYPE_AAAA,
     [aaaa("headless-ipv6.ns1.svc.cluster.local", "2001:db8::33")]),
    ("single-stack IPv6 headless: no A", "headless-ipv6.ns1.svc.cluster.local.", TYPE_A, []),
    ("single-stack IPv4 service: no AAAA", "v4-only.ns1.svc.cluster.local.", TYPE_AAAA, []),
    ("pod hostname of a headless service (ztunnel forwards it too)",
     "headless.pod0.ns1.svc.cluster.local.", TYPE_A, FORWARD),
    ("no VIP and not a Kubernetes service", "headless.example.com", TYPE_A, FORWARD),
    ("no VIP, no endpoints", "headless-no-endpoints.example.com", TYPE_A, FORWARD),
    ("the client's namespace wins", "everywhere.io.", TYPE_A, [a("everywhere.io", "10.10.10.112")]),
    ("else the first namespace", "elsewhere.io.", TYPE_A, [a("elsewhere.io", "10.10.10.120")]),
    ("case as asked", "ProductPage.NS1", TYPE_A, [a("ProductPage.NS1", "9.9.9.9")]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "host", "qtype", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lookup(
    resolver: DnsResolver,
    client: Workload,
    case: str,
    host: str,
    qtype: int,
    expected: list[Record] | None,
) -> None:
    result = resolver.resolve(client, n(host), qtype)
    if expected is FORWARD:
        assert isinstance(result, Forward), result
        return
    assert isinstance(result, Answer), result
    assert sorted(result.records, key=str) == sorted(expected, key=str)
    assert [r.rtype for r in result.records][: len(expected)] == [r.rtype for r in expected]


def test_a_cname_comes_first_and_carries_the_ttl(resolver: DnsResolver, client: Workload) -> None:
    result = resolver.resolve(client, n("productpage.ns1.svc.cluster.local"), TYPE_A)
    assert isinstance(result, Answer) and result.records[0].ttl == DEFAULT_TTL == 30
    via_search = resolver.resolve(client, n("productpage.ns1.ns1.svc.cluster.local"), TYPE_A)
    assert isinstance(via_search, Answer)
    assert [r.rtype for r in via_search.records] == [TYPE_CNAME, TYPE_A]


def test_a_client_in_another_namespace_expands_short_names_there(
    store: StateStore, resolver: DnsResolver, client: Workload
) -> None:
    elsewhere = dataclasses.replace(client, namespace="ns2")
    assert resolver.resolve(elsewhere, n("example"), TYPE_A) == Answer(
        (a("example", "10.10.10.10"),), "success"
    )
    assert isinstance(resolver.resolve(elsewhere, n("productpage"), TYPE_A), Forward)
    assert resolver.resolve(elsewhere, n("everywhere.io"), TYPE_A) == Answer(
        (a("everywhere.io", "10.10.10.110"),), "success"
    )


def test_static_search_domains_strip_what_the_proxy_resolv_conf_lists(
    store: StateStore, client: Workload
) -> None:
    resolver = DnsResolver(
        store,
        cluster_domain="cluster.local",
        search_domains=static_search_domains(["corp.example"]),
    )
    result = resolver.resolve(client, n("www.google.com.corp.example"), TYPE_A)
    assert result == Answer(
        (cname("www.google.com.corp.example", "www.google.com"), a("www.google.com", "1.1.1.1")),
        "success",
    )
    # The Kubernetes search list is not assumed in that mode.
    assert isinstance(
        resolver.resolve(client, n("www.google.com.ns1.svc.cluster.local"), TYPE_A), Forward
    )


def test_another_cluster_domain_is_used_for_expansion(store: StateStore, client: Workload) -> None:
    resolver = DnsResolver(
        store,
        cluster_domain="cluster.remote",
        search_domains=kubernetes_search_domains("cluster.remote"),
    )
    assert resolver.resolve(client, n("details.ns2"), TYPE_A) == Answer(
        tuple(a("details.ns2", f"{i}.{i}.{i}.{i}") for i in (11, 12, 13, 14)), "success"
    )


KUBE_FQDNS = [
    ("name", ["name.ns1.svc.cluster.local"]),
    ("name.", ["name.ns1.svc.cluster.local"]),
    ("name.ns2", ["name.ns2.svc.cluster.local", "name.ns2.ns1.svc.cluster.local"]),
    ("name.ns2.svc.", ["name.ns2.svc.cluster.local", "name.ns2.svc.svc.cluster.local"]),
    ("name.ns2.not-svc.", ["name.ns2.not-svc.svc.cluster.local"]),
    ("pod.sub-domain.ns.svc", ["pod.sub-domain.ns.svc.cluster.local"]),
    ("pod.sub-domain.ns.not-svc", []),
    ("name.ns2.svc.cluster.", []),
    ("name.ns2.svc.cluster.local", []),
    ("www.google.com.", ["www.google.com.svc.cluster.local"]),
]


@pytest.mark.parametrize(("host", "expected"), KUBE_FQDNS)
def test_kube_fqdns_by_label_count(resolver: DnsResolver, host: str, expected: list[str]) -> None:
    namespaced = n("ns1.svc.cluster.local")
    assert resolver.kube_fqdns(n(host), namespaced) == [n(e) for e in expected]


def test_wildcards_from_the_most_specific() -> None:
    assert wildcards(n("svc1")) == [n("svc1")]
    assert wildcards(n("svc1.ns1.svc.cluster.local")) == [
        n("svc1.ns1.svc.cluster.local"),
        n("*.ns1.svc.cluster.local"),
        n("*.svc.cluster.local"),
        n("*.cluster.local"),
        n("*.local"),
    ]
