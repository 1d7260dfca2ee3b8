"""The store's secondary indexes: kept in step with every insert and removal, never rebuilt.

Several objects may claim one key (two workloads on one IP during a pod restart, one hostname
in several namespaces through ServiceEntry), so each index keeps all claimants and lookups
choose among them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from ambient_fast.state.model import NetworkAddress, NetworkMode, Service, Workload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class MultiIndex(Generic[K, V]):
    """key -> {id: value}, in insertion order; empty keys are dropped."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[K, dict[str, V]] = {}

    def add(self, key: K, ident: str, value: V) -> None:
        self._entries.setdefault(key, {})[ident] = value

    def discard(self, key: K, ident: str) -> None:
        claimants = self._entries.get(key)
        if claimants is not None and claimants.pop(ident, None) is not None and not claimants:
            del self._entries[key]

    def get(self, key: K) -> dict[str, V]:
        return self._entries.get(key) or {}

    def __len__(self) -> int:
        return len(self._entries)


def _ip_preference(workload: Workload) -> int:
    # ztunnel's tie-break for one address (WorkloadByAddr::get): a Pod is hard to spoof and
    # most likely the real owner; an HBONE (captured) workload carries more useful context.
    return 2 * ("//Pod/" in workload.uid) + workload.captured


class WorkloadIndex:
    """Workloads by uid, by network address and by the services they back."""

    def __init__(self) -> None:
        self.by_uid: dict[str, Workload] = {}
        self._by_address: MultiIndex[NetworkAddress, Workload] = MultiIndex()
        self._by_service: MultiIndex[str, Workload] = MultiIndex()

    def insert(self, workload: Workload) -> Workload | None:
        """Adds or replaces the workload with this uid; returns the one it replaced."""
        uid = workload.uid
        previous = self.by_uid.get(uid)
        self.by_uid[uid] = workload
        addresses = set(self._indexed_addresses(workload))
        if previous is not None:
            # Keys it keeps stay where they are in their claimants' order.
            for address in set(self._indexed_addresses(previous)) - addresses:
                self._by_address.discard(address, uid)
            for key in previous.services.keys() - workload.services.keys():
                self._by_service.discard(key, uid)
        for address in addresses:
            self._by_address.add(address, workload.uid, workload)
        for key in workload.services:
            self._by_service.add(key, workload.uid, workload)
        return previous

    def remove(self, uid: str) -> Workload | None:
        previous = self.by_uid.pop(uid, None)
        if previous is not None:
            for address in self._indexed_addresses(previous):
                self._by_address.discard(address, uid)
            for key in previous.services:
                self._by_service.discard(key, uid)
        return previous

    @staticmethod
    def _indexed_addresses(workload: Workload) -> Iterable[NetworkAddress]:
        # A host-network workload shares the node's IP: an address says nothing about it.
        if workload.network_mode is NetworkMode.HOST_NETWORK:
            return ()
        return workload.addresses()

    def by_address(self, address: NetworkAddress) -> Workload | None:
        claimants = self._by_address.get(address)
        if not claimants:
            return None
        if len(claimants) == 1:
            return next(iter(claimants.values()))
        return max(claimants.values(), key=_ip_preference)

    def members(self, service_key: str) -> dict[str, Workload]:
        """The workloads listing the service (uid -> workload), whether or not it exists yet."""
        return self._by_service.get(service_key)


class ServiceIndex:
    """Services by "ns/hostname", by VIP and by hostname."""

    def __init__(self) -> None:
        self.by_key: dict[str, Service] = {}
        self._by_vip: MultiIndex[NetworkAddress, Service] = MultiIndex()
        self._by_hostname: MultiIndex[str, Service] = MultiIndex()

    def insert(self, service: Service) -> Service | None:
        key = service.key
        previous = self.by_key.get(key)
        self.by_key[key] = service
        if previous is not None:
            # A VIP it keeps stays claimed first by it.
            for vip in set(previous.vips) - set(service.vips):
                self._by_vip.discard(vip, key)
        for vip in service.vips:
            self._by_vip.add(vip, key, service)
        self._by_hostname.add(service.hostname, key, service)
        return previous

    def remove(self, key: str) -> Service | None:
        previous = self.by_key.pop(key, None)
        if previous is not None:
            for vip in previous.vips:
                self._by_vip.discard(vip, key)
            self._by_hostname.discard(previous.hostname, key)
        return previous

    def by_vip(self, vip: NetworkAddress) -> Service | None:
        # Two services claiming one VIP is a control-plane conflict; the first one keeps it.
        claimants = self._by_vip.get(vip)
        return next(iter(claimants.values()), None)

    def by_hostname(self, hostname: str) -> list[Service]:
        return sorted(self._by_hostname.get(hostname).values(), key=lambda s: s.namespace)
