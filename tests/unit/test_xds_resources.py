"""The resource store: content versions, effective changes only, subscribers, type checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.message import Message

from ambient_fast.xds.proto.authorization_pb2 import Authorization
from ambient_fast.xds.proto.workload_pb2 import Address, PortList, Workload
from ambient_fast.xds.resources import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    Change,
    ResourceStore,
    UnknownTypeUrl,
    make_resource,
)


def address(uid: str, *services: str) -> Address:
    return Address(workload=Workload(uid=uid, services={name: PortList() for name in services}))


def test_version_is_a_hash_of_the_content() -> None:
    assert make_resource("a", address("a")).version == make_resource("a", address("a")).version
    assert make_resource("a", address("a")).version != make_resource("a", address("b")).version


def test_version_does_not_depend_on_map_insertion_order() -> None:
    forward = make_resource("a", address("a", "ns/x", "ns/y", "ns/z"))
    backward = make_resource("a", address("a", "ns/z", "ns/y", "ns/x"))
    assert forward.version == backward.version


def test_resource_is_packed_with_its_type_url() -> None:
    resource = make_resource("ns/p", Authorization(name="p", namespace="ns"))
    assert resource.name == "ns/p"
    assert resource.resource.type_url == AUTHORIZATION_TYPE_URL


def test_the_store_serves_what_was_stored_with_its_version() -> None:
    store = ResourceStore()
    store.update(ADDRESS_TYPE_URL, {"a": address("a", "ns/svc")})
    resource = store.get(ADDRESS_TYPE_URL, "a")
    assert resource == make_resource("a", address("a", "ns/svc"))
    assert store.version(ADDRESS_TYPE_URL, "a") == resource.version
    assert Address.FromString(resource.resource.value) == address("a", "ns/svc")
    assert store.get(ADDRESS_TYPE_URL, "b") is None and store.version(ADDRESS_TYPE_URL, "b") is None


def test_only_effective_changes_reach_subscribers() -> None:
    store = ResourceStore()
    seen: list[Change] = []
    store.subscribe(seen.append)
    store.update(ADDRESS_TYPE_URL, {"a": address("a"), "b": address("b")})
    assert store.update(ADDRESS_TYPE_URL, {"a": address("a")}) is None
    assert store.update(ADDRESS_TYPE_URL, removals=["missing"]) is None
    store.update(ADDRESS_TYPE_URL, {"a": address("a", "ns/svc")}, removals=["b"])
    assert seen == [
        Change(ADDRESS_TYPE_URL, frozenset({"a", "b"})),
        Change(ADDRESS_TYPE_URL, frozenset({"a", "b"})),
    ]
    assert set(store.names(ADDRESS_TYPE_URL)) == {"a"}
    assert store.system_version == 2


def test_replace_removes_what_the_new_snapshot_lacks() -> None:
    store = ResourceStore()
    store.update(ADDRESS_TYPE_URL, {"a": address("a"), "b": address("b")})
    change = store.replace(ADDRESS_TYPE_URL, {"b": address("b"), "c": address("c")})
    assert change == Change(ADDRESS_TYPE_URL, frozenset({"a", "c"}))
    assert set(store.names(ADDRESS_TYPE_URL)) == {"b", "c"}


def test_a_message_of_another_type_is_refused_and_nothing_is_applied() -> None:
    store = ResourceStore()
    with pytest.raises(TypeError, match=r"'ns/p' is a type.googleapis.com/istio.security"):
        store.update(
            ADDRESS_TYPE_URL,
            {"a": address("a"), "ns/p": Authorization(name="p")},
        )
    assert not store.names(ADDRESS_TYPE_URL)


def test_upsert_and_removal_of_one_name_is_refused() -> None:
    with pytest.raises(ValueError, match="both upserted and removed"):
        ResourceStore().update(ADDRESS_TYPE_URL, {"a": address("a")}, removals=["a"])


def test_unknown_type_url_names_what_is_served() -> None:
    with pytest.raises(UnknownTypeUrl) as raised:
        ResourceStore().update("type.googleapis.com/x.Y", {})
    assert "'type.googleapis.com/x.Y'" in str(raised.value)
    assert ADDRESS_TYPE_URL in str(raised.value)


def test_registered_type_must_be_a_type_url() -> None:
    with pytest.raises(ValueError, match="must start with"):
        ResourceStore().register_type("istio.workload.Address")


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    store = ResourceStore()
    seen: list[Change] = []

    def broken(change: Change) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    store.subscribe(seen.append)
    store.update(ADDRESS_TYPE_URL, {"a": address("a")})
    assert len(seen) == 1
    assert "subscriber failed" in caplog.text


def test_unsubscribed_callbacks_hear_nothing() -> None:
    store = ResourceStore()
    seen: list[Change] = []
    unsubscribe = store.subscribe(seen.append)
    unsubscribe()
    unsubscribe()
    store.update(ADDRESS_TYPE_URL, {"a": address("a")})
    assert seen == []


def test_resources_may_come_as_pairs_made_one_at_a_time() -> None:
    store = ResourceStore()
    seen: list[Change] = []
    store.subscribe(seen.append)
    made: list[str] = []

    def pairs(*uids: str) -> Iterator[tuple[str, Address]]:
        for uid in uids:
            made.append(uid)
            yield uid, address(uid)

    store.replace(ADDRESS_TYPE_URL, pairs("a", "b"))  # the first fill
    store.replace(ADDRESS_TYPE_URL, pairs("b", "c"))
    store.update(ADDRESS_TYPE_URL, pairs("d"))
    assert made == ["a", "b", "b", "c", "d"]
    assert seen == [
        Change(ADDRESS_TYPE_URL, frozenset({"a", "b"})),
        Change(ADDRESS_TYPE_URL, frozenset({"a", "c"})),
        Change(ADDRESS_TYPE_URL, frozenset({"d"})),
    ]
    assert sorted(store.names(ADDRESS_TYPE_URL)) == ["b", "c", "d"]
    version, serialized = store.entry(ADDRESS_TYPE_URL, "c")
    assert version == make_resource("c", address("c")).version
    assert Address.FromString(serialized) == address("c")


def test_a_bad_pair_late_in_the_stream_still_changes_nothing() -> None:
    store = ResourceStore()
    store.replace(ADDRESS_TYPE_URL, {"a": address("a")})
    pairs: list[tuple[str, Message]] = [("b", address("b")), ("ns/p", Authorization(name="p"))]
    with pytest.raises(TypeError, match="'ns/p'"):
        store.replace(ADDRESS_TYPE_URL, iter(pairs))
    assert list(store.names(ADDRESS_TYPE_URL)) == ["a"]
