"""What ztunnel's DNS proxy answers from the mesh, sans-IO: (client, name, type) -> records or
"forward upstream" (istio/ztunnel src/dns/server.rs `Store::lookup`).

The requested name is tried as asked, then as the Kubernetes FQDNs its label count allows
relative to the client's namespace (`<svc>` -> `<svc>.<ns>.svc.<domain>`, `<svc>.<ns>` ->
`<svc>.<ns>.svc.<domain>`, `<svc>.<ns>.svc` -> `... .<domain>`), then with each of the client's
search domains stripped (the resolver in the pod appended them) and expanded again. For each of
those aliases the hostname itself and then its wildcards (`*.example.com`, `*.com`) are looked
up among the services; services without a VIP are skipped unless they are Kubernetes headless
services (answered with their endpoints' IPs); among services of one hostname the client's
namespace wins. A known host answers only addresses of the asked family (none: NOERROR without
records, never forwarded); a match found by stripping a search domain answers a CNAME from the
asked name to the stripped one first. Anything else (other record types, unknown names) is
forwarded. The client is the proxy's own workload (the handler answers SERVFAIL without one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ambient_fast.state import Service, StateStore, Workload
from ambient_fast.state.model import IpAddress, IpFamilies
from ambient_fast.ztunnel.dns.message import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    Name,
    Record,
    lower,
    name_from_text,
)

# ztunnel's DEFAULT_TTL_SECONDS (src/dns/server.rs).
DEFAULT_TTL = 30
_SVC = b"svc"
_WILDCARD = b"*"

# The search domains a client's resolver appends, which a query may carry.
SearchDomains = Callable[[Workload], Sequence[Name]]


def kubernetes_search_domains(cluster_domain: str) -> SearchDomains:
    """A pod's resolv.conf search list, `<ns>.svc.<domain> svc.<domain> <domain>` (ztunnel's
    per-pod list in shared mode)."""
    domain = name_from_text(cluster_domain)

    def search(client: Workload) -> Sequence[Name]:
        return ((client.namespace.encode(), _SVC, *domain), (_SVC, *domain), domain)

    return search


def static_search_domains(domains: Sequence[str]) -> SearchDomains:
    """One list for every client (ztunnel's dedicated mode: the proxy's own resolv.conf)."""
    names = tuple(name_from_text(d) for d in domains if d.strip("."))
    return lambda _client: names


@dataclass(frozen=True, slots=True)
class Answer:
    """We are the authority: these records (possibly none), with NOERROR."""

    records: tuple[Record, ...]
    result: str  # for the log line: success, no records, ...


@dataclass(frozen=True, slots=True)
class Forward:
    """Not ours to answer: ask the upstream resolver."""

    reason: str


Resolution = Answer | Forward


@dataclass(frozen=True, slots=True)
class _Alias:
    name: Name  # lower case, for lookups
    stripped: Name | None  # the asked name without a search domain, as asked (case kept)


def _has_domain(name: Name, domain: Name) -> bool:
    """`name` ends with `domain` and has more labels (both lower case)."""
    return bool(domain) and len(name) > len(domain) and name[-len(domain) :] == domain


def wildcards(name: Name) -> list[Name]:
    """The name, then `*.` + each of its parents with at least one label (ztunnel's
    get_wildcards): a.b.c -> a.b.c, *.b.c, *.c."""
    out = [name]
    for start in range(1, len(name)):
        out.append((_WILDCARD, *name[start:]))
    return out


def _text(name: Name) -> str:
    return b".".join(name).decode("latin-1")


class DnsResolver:
    """Answers from one `StateStore`; `cluster_domain` is CLUSTER_DOMAIN."""

    def __init__(
        self, store: StateStore, *, cluster_domain: str, search_domains: SearchDomains
    ) -> None:
        self._store = store
        self._domain = lower(name_from_text(cluster_domain))
        self._svc_domain: Name = (_SVC, *self._domain)
        self._headless_suffix = "." + _text(self._svc_domain)
        self._search_domains = search_domains

    def resolve(self, client: Workload, name: Name, qtype: int) -> Resolution:
        if qtype not in (TYPE_A, TYPE_AAAA):
            return Forward("record type")
        found = self._find(client, name)
        if found is None:
            return Forward("unknown host")
        service, matched, alias = found
        if not _family_allowed(service, qtype):
            return Answer((), "service does not support this record type")
        addresses = self._addresses(client, service, qtype)
        if not addresses:
            return Answer((), "no records")
        records: list[Record] = []
        owner = name
        if alias.stripped is not None and matched[0] != _WILDCARD:
            records.append(Record(name, TYPE_CNAME, DEFAULT_TTL, alias.stripped))
            owner = alias.stripped
        records += (Record(owner, qtype, DEFAULT_TTL, ip) for ip in addresses)
        return Answer(tuple(records), "success")

    # -- finding the service ---------------------------------------------------------------

    def aliases(self, client: Workload, name: Name) -> list[_Alias]:
        """The names to look up, in order, without repeats (ztunnel's get_aliases)."""
        out: list[_Alias] = []
        seen: set[Name] = set()

        def add(alias_name: Name, stripped: Name | None) -> None:
            key = lower(alias_name)
            if key not in seen:
                seen.add(key)
                out.append(_Alias(key, stripped))

        namespaced: Name = (client.namespace.encode().lower(), *self._svc_domain)
        add(name, None)
        for fqdn in self.kube_fqdns(lower(name), namespaced):
            add(fqdn, None)
        for domain in self._search_domains(client):
            domain = lower(domain)
            if not _has_domain(lower(name), domain):
                continue
            stripped = name[: len(name) - len(domain)]
            add(stripped, stripped)
            for fqdn in self.kube_fqdns(lower(stripped), namespaced):
                add(fqdn, stripped)
        return out

    def kube_fqdns(self, name: Name, namespaced: Name) -> list[Name]:
        """The Kubernetes FQDNs a short name may stand for, by label count (ztunnel's
        to_kube_fqdns): service forms `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` and pod-host
        forms `<pod>.<subdomain>[.<ns>[.svc]]`. All are looked up as service hostnames;
        ztunnel's extra check of pod hostnames against headless endpoints is not done here
        (its own tests expect those names forwarded)."""
        count = len(name)
        if count == 1:
            return [(*name, *namespaced)]
        if count == 2:
            return [(*name, *self._svc_domain), (*name, *namespaced)]
        if count == 3:
            service = [(*name, *self._domain)] if name[-1] == _SVC else []
            return [*service, (*name, *self._svc_domain)]
        if count == 4 and name[-1] == _SVC:
            return [(*name, *self._domain)]
        return []

    def _find(self, client: Workload, name: Name) -> tuple[Service, Name, _Alias] | None:
        for alias in self.aliases(client, name):
            for candidate in wildcards(alias.name):
                service = self._best_service(client, _text(candidate))
                if service is not None:
                    return service, candidate, alias
        return None

    def _best_service(self, client: Workload, hostname: str) -> Service | None:
        """The client's namespace first, else the first (ztunnel's ServiceMatch); services
        without VIPs count only when they are Kubernetes headless services."""
        best: Service | None = None
        for service in self._store.services_by_hostname(hostname):
            if not service.vips and not self._kubernetes_headless(service):
                continue
            if service.namespace == client.namespace:
                return service
            if best is None:
                best = service
        return best

    def _kubernetes_headless(self, service: Service) -> bool:
        return not service.vips and service.hostname.endswith(self._headless_suffix)

    # -- the addresses -----------------------------------------------------------------------

    def _addresses(self, client: Workload, service: Service, qtype: int) -> list[IpAddress]:
        version = 4 if qtype == TYPE_A else 6
        if not service.vips:
            # Headless: one address of the family per endpoint workload.
            out = []
            for workload in self._store.service_workloads(service):
                ip = next((ip for ip in workload.ips if ip.version == version), None)
                if ip is not None:
                    out.append(ip)
            return out
        return [
            vip.ip
            for vip in service.vips
            if vip.ip.version == version and vip.network == client.network
        ]


def _family_allowed(service: Service, qtype: int) -> bool:
    """A single-stack service answers nothing for the other family (its headless endpoints
    may be dual-stack; ztunnel's service_family_allowed)."""
    if service.ip_families is IpFamilies.IPV4_ONLY:
        return qtype != TYPE_AAAA
    if service.ip_families is IpFamilies.IPV6_ONLY:
        return qtype != TYPE_A
    return True
