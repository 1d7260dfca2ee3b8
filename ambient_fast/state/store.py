"""The node proxy's view of the mesh: workloads, services and policies, indexed for lookups.

Sans-IO: `apply(type_url, upserts, removals)` takes decoded workload-API messages (from the xDS
client or the local file) and returns what changed and what it refused; subscribers hear about
every effective change (a policy change makes the proxy re-check its live connections).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.message import Message

from ambient_fast.policy import Decision, Policy, PolicyTable, Request
from ambient_fast.policy.engine import DEFAULT_ROOT_NAMESPACE, CompiledPolicy
from ambient_fast.state.convert import InvalidResource, address_from_proto, policy_from_proto
from ambient_fast.state.indexes import ServiceIndex, WorkloadIndex
from ambient_fast.state.model import IpAddress, NetworkAddress, Service, Workload
from ambient_fast.xds.proto.authorization_pb2 import Authorization
from ambient_fast.xds.proto.workload_pb2 import Address
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateChange:
    """What one apply changed (added, replaced or removed), by key."""

    workloads: frozenset[str] = frozenset()  # uids
    services: frozenset[str] = frozenset()  # "<namespace>/<hostname>"
    policies: frozenset[str] = frozenset()  # "<namespace>/<name>"

    def __bool__(self) -> bool:
        return bool(self.workloads or self.services or self.policies)


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one apply: the effective change and the refused resources (name ->
    reason); refused resources leave whatever version the store held before in place."""

    change: StateChange
    rejected: Mapping[str, str] = field(default_factory=dict)


class Endpoint(NamedTuple):
    workload: Workload
    target_port: int


StateSubscriber = Callable[[StateChange], None]


def _address_of(network: str, ip: IpAddress | str) -> NetworkAddress:
    return NetworkAddress(network, ipaddress.ip_address(ip) if isinstance(ip, str) else ip)


class StateStore:
    """Workloads and services from Address resources, policies from Authorization resources."""

    def __init__(self, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self._workloads = WorkloadIndex()
        self._services = ServiceIndex()
        self._policies: dict[str, Policy] = {}
        self._root_namespace = root_namespace
        self._policy_table = PolicyTable((), root_namespace)
        # service key -> service port -> endpoints; dropped when the service or a member changes.
        self._endpoints: dict[str, dict[int, tuple[Endpoint, ...]]] = {}
        self._subscribers: list[StateSubscriber] = []

    # -- updates -------------------------------------------------------------------------

    def apply(
        self,
        type_url: str,
        upserts: Mapping[str, Message],
        removals: Collection[str] = (),
    ) -> Applied:
        """Adds or replaces `upserts` and drops `removals` (by resource name); each invalid
        upsert is refused alone. Subscribers hear about the change if there is one."""
        rejected: dict[str, str] = {}
        for name in upserts.keys() & set(removals):
            rejected[name] = "both updated and removed in one update"
        good = {name: message for name, message in upserts.items() if name not in rejected}
        gone = [name for name in removals if name not in rejected]
        if type_url == ADDRESS_TYPE_URL:
            change = self._apply_addresses(good, gone, rejected)
        elif type_url == AUTHORIZATION_TYPE_URL:
            change = self._apply_policies(good, gone, rejected)
        else:
            rejected.update(dict.fromkeys(good, f"type {type_url} is not part of the state"))
            change = StateChange()
        if change:
            self._notify(change)
        return Applied(change, rejected)

    def _apply_addresses(
        self, upserts: Mapping[str, Message], removals: Iterable[str], rejected: dict[str, str]
    ) -> StateChange:
        workloads: set[str] = set()
        services: set[str] = set()
        for name, message in upserts.items():
            if not isinstance(message, Address):
                rejected[name] = f"expected istio.workload.Address, got {type(message).__name__}"
                continue
            try:
                value = address_from_proto(name, message)
            except InvalidResource as e:
                rejected[name] = str(e)
                continue
            if isinstance(value, Workload):
                if self._workloads.by_uid.get(name) == value:
                    continue
                self._remove_service(name, services)  # a name changing kind: drop the old one
                self._insert_workload(value)
                workloads.add(name)
            else:
                if self._services.by_key.get(name) == value:
                    continue
                self._remove_workload(name, workloads)
                self._services.insert(value)
                self._endpoints.pop(name, None)
                services.add(name)
        for name in removals:
            self._remove_workload(name, workloads)
            self._remove_service(name, services)
        return StateChange(frozenset(workloads), frozenset(services))

    def _insert_workload(self, workload: Workload) -> None:
        previous = self._workloads.insert(workload)
        self._forget_endpoints(workload)
        if previous is not None:
            self._forget_endpoints(previous)

    def _remove_workload(self, uid: str, changed: set[str]) -> None:
        previous = self._workloads.remove(uid)
        if previous is not None:
            self._forget_endpoints(previous)
            changed.add(uid)

    def _remove_service(self, key: str, changed: set[str]) -> None:
        if self._services.remove(key) is not None:
            self._endpoints.pop(key, None)
            changed.add(key)

    def _forget_endpoints(self, workload: Workload) -> None:
        for key in workload.services:
            self._endpoints.pop(key, None)

    def _apply_policies(
        self, upserts: Mapping[str, Message], removals: Iterable[str], rejected: dict[str, str]
    ) -> StateChange:
        changed: set[str] = set()
        for name, message in upserts.items():
            if not isinstance(message, Authorization):
                rejected[name] = (
                    f"expected istio.security.Authorization, got {type(message).__name__}"
                )
                continue
            try:
                policy = policy_from_proto(name, message)
            except InvalidResource as e:
                rejected[name] = str(e)
                continue
            if self._policies.get(name) != policy:
                self._policies[name] = policy
                changed.add(name)
        for name in removals:
            if self._policies.pop(name, None) is not None:
                changed.add(name)
        if changed:
            # Compiled once per change; connections only look up (CONVENTIONS "compile, then
            # look up").
            self._policy_table = PolicyTable(self._policies.values(), self._root_namespace)
        return StateChange(policies=frozenset(changed))

    def subscribe(self, subscriber: StateSubscriber) -> Callable[[], None]:
        """Calls `subscriber` after every effective change; returns the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def _notify(self, change: StateChange) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(change)
            except Exception:
                # One broken listener must not keep the others from hearing about the change.
                log.exception("state: subscriber failed on %s", change)

    # -- lookups -------------------------------------------------------------------------

    def workload_by_uid(self, uid: str) -> Workload | None:
        return self._workloads.by_uid.get(uid)

    def workload_by_ip(self, network: str, ip: IpAddress | str) -> Workload | None:
        """The workload at `ip` on `network` (host-network workloads are never found by IP)."""
        return self._workloads.by_address(_address_of(network, ip))

    def service_by_key(self, key: str) -> Service | None:
        """The service named "<namespace>/<hostname>"."""
        return self._services.by_key.get(key)

    def service_by_vip(self, network: str, ip: IpAddress | str) -> Service | None:
        return self._services.by_vip(_address_of(network, ip))

    def service_by_hostname(self, hostname: str, namespace: str | None = None) -> Service | None:
        """The service with this hostname: the one in `namespace` if given, else (a hostname
        defined in several namespaces) the first by namespace name."""
        services = self._services.by_hostname(hostname)
        if namespace is not None:
            return next((s for s in services if s.namespace == namespace), None)
        return services[0] if services else None

    def services_by_hostname(self, hostname: str) -> list[Service]:
        return self._services.by_hostname(hostname)

    def endpoints(self, service: Service, port: int) -> tuple[Endpoint, ...]:
        """The workloads serving `port` of `service` with their target ports: healthy ones first,
        unhealthy ones only when the service's health policy is ALLOW_ALL."""
        if self._services.by_key.get(service.key) is not service:
            return self._compute_endpoints(service, port)  # a stale object: answer, don't cache
        by_port = self._endpoints.setdefault(service.key, {})
        found = by_port.get(port)
        if found is None:
            found = by_port[port] = self._compute_endpoints(service, port)
        return found

    def service_workloads(self, service: Service) -> list[Workload]:
        """The workloads behind `service` whatever the port: healthy ones, and unhealthy ones
        too when its health policy is ALLOW_ALL (a headless service's DNS answer)."""
        members = self._workloads.members(service.key).values()
        return [w for w in members if w.healthy or service.accepts_unhealthy]

    def _compute_endpoints(self, service: Service, port: int) -> tuple[Endpoint, ...]:
        service_port = service.ports.get(port)
        fallback = service_port.target_port if service_port is not None else 0
        healthy: list[Endpoint] = []
        unhealthy: list[Endpoint] = []
        for workload in self._workloads.members(service.key).values():
            # The workload's own mapping first (named target ports differ per pod), else the
            # service's target port; with neither, the workload does not serve this port.
            target = workload.services[service.key].get(port) or fallback
            if not target:
                continue
            if workload.healthy:
                healthy.append(Endpoint(workload, target))
            elif service.accepts_unhealthy:
                unhealthy.append(Endpoint(workload, target))
        return (*healthy, *unhealthy)

    @property
    def policy_table(self) -> PolicyTable:
        return self._policy_table

    def policy(self, key: str) -> Policy | None:
        return self._policies.get(key)

    def policies_for(self, workload: Workload) -> list[CompiledPolicy]:
        """The compiled policies that apply to a destination workload: GLOBAL ones, its
        namespace's, and the selector policies it lists (reference 02)."""
        return self._policy_table.applicable(workload.namespace, workload.authorization_policies)

    def authorize(self, workload: Workload, request: Request) -> Decision:
        return PolicyTable.decide(self.policies_for(workload), request)

    # -- inventory (admin, config dump, tests) -------------------------------------------

    def workloads(self) -> list[Workload]:
        return list(self._workloads.by_uid.values())

    def services(self) -> list[Service]:
        return list(self._services.by_key.values())

    def policies(self) -> list[Policy]:
        return list(self._policies.values())

    def address_names(self) -> set[str]:
        """Every Address resource name held (workload uids and service keys)."""
        return self._workloads.by_uid.keys() | self._services.by_key.keys()
