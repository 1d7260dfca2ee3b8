"""Delta xDS rules on one stream, without sockets: requests and store changes in, responses out."""

from __future__ import annotations

import pytest

from ambient_fast.xds.delta import DeltaProtocolError, DeltaStream
from ambient_fast.xds.proto.authorization_pb2 import Authorization
from ambient_fast.xds.proto.core_pb2 import Node
from ambient_fast.xds.proto.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Status,
)
from ambient_fast.xds.proto.workload_pb2 import Address, Workload
from ambient_fast.xds.resources import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    TYPE_PREFIX,
    ResourceStore,
)

INVALID_ARGUMENT = 3


def address(uid: str, last_octet: int = 1, node: str = "node-a") -> Address:
    return Address(
        workload=Workload(uid=uid, name=uid, addresses=[bytes([10, 0, 0, last_octet])], node=node)
    )


def store_with(*uids: str) -> ResourceStore:
    store = ResourceStore()
    store.update(ADDRESS_TYPE_URL, {uid: address(uid, i + 1) for i, uid in enumerate(uids)})
    return store


def request(
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    initial: dict[str, str] | None = None,
    type_url: str = ADDRESS_TYPE_URL,
) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        initial_resource_versions=initial or {},
    )


def ack(response: DeltaDiscoveryResponse, subscribe: tuple[str, ...] = ()) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(
        type_url=response.type_url,
        response_nonce=response.nonce,
        resource_names_subscribe=subscribe,
    )


def nack(response: DeltaDiscoveryResponse, why: str) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(
        type_url=response.type_url,
        response_nonce=response.nonce,
        error_detail=Status(code=INVALID_ARGUMENT, message=why),
    )


def push(
    stream: DeltaStream,
    store: ResourceStore,
    upserts: dict[str, Address] | None = None,
    removals: tuple[str, ...] = (),
) -> list[DeltaDiscoveryResponse]:
    """Changes the store and hands the change to the stream, as the server does."""
    change = store.update(ADDRESS_TYPE_URL, upserts, removals)
    assert change is not None, "expected an effective change"
    return stream.resources_changed(change)


def only(responses: list[DeltaDiscoveryResponse]) -> DeltaDiscoveryResponse:
    assert len(responses) == 1, responses
    return responses[0]


def sent(response: DeltaDiscoveryResponse) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}


def uid_of(response: DeltaDiscoveryResponse, name: str) -> Address:
    for resource in response.resources:
        if resource.name == name:
            message = Address()
            assert resource.resource.Unpack(message)
            return message
    raise AssertionError(f"{name} not in response")


def connected(store: ResourceStore, *subscribe: str) -> tuple[DeltaStream, DeltaDiscoveryResponse]:
    """A stream whose first response was received and ACKed."""
    stream = DeltaStream(store)
    first = only(stream.receive(request(subscribe)).responses)
    assert stream.receive(ack(first)).responses == []
    return stream, first


# Subscriptions


def test_empty_first_request_is_a_wildcard_subscription_to_everything() -> None:
    stream = DeltaStream(store_with("a", "b", "c"))
    response = only(stream.receive(request()).responses)
    assert response.type_url == ADDRESS_TYPE_URL
    assert sorted(sent(response)) == ["a", "b", "c"]
    assert response.nonce
    assert uid_of(response, "b").workload.addresses == [bytes([10, 0, 0, 2])]
    assert all(r.resource.type_url == ADDRESS_TYPE_URL for r in response.resources)


def test_star_is_a_wildcard_subscription() -> None:
    stream = DeltaStream(store_with("a", "b"))
    assert sorted(sent(only(stream.receive(request(("*",))).responses))) == ["a", "b"]


def test_first_request_is_answered_even_when_there_is_nothing() -> None:
    stream = DeltaStream(ResourceStore())
    response = only(stream.receive(request(type_url=AUTHORIZATION_TYPE_URL)).responses)
    assert response.nonce and not response.resources and not response.removed_resources


def test_named_subscription_gets_only_those_names_and_later_only_their_changes() -> None:
    store = store_with("a", "b", "c")
    stream, first = connected(store, "b")
    assert sent(first).keys() == {"b"}
    assert push(stream, store, {"a": address("a", 9)}) == []
    assert sent(only(push(stream, store, {"b": address("b", 9)}))).keys() == {"b"}


def test_on_demand_subscribe_of_one_name_later_in_the_stream() -> None:
    store = store_with("a", "b")
    stream, _ = connected(store, "a")
    response = only(stream.receive(request(("b",))).responses)
    assert sent(response).keys() == {"b"}


def test_subscribing_to_a_missing_name_is_answered_with_its_removal() -> None:
    stream, _ = connected(store_with("a"), "a")
    response = only(stream.receive(request(("nope",))).responses)
    assert list(response.removed_resources) == ["nope"] and not response.resources


def test_resubscribing_resends_even_what_the_client_should_have() -> None:
    # Envoy: a client may have dropped a resource and regained interest before unsubscribing.
    store = store_with("a")
    stream, _ = connected(store, "a")
    assert sent(only(stream.receive(request(("a",))).responses)).keys() == {"a"}


def test_unsubscribed_names_are_no_longer_pushed() -> None:
    store = store_with("a", "b")
    stream, _ = connected(store, "a", "b")
    assert stream.receive(request(unsubscribe=("a",))).responses == []
    assert push(stream, store, {"a": address("a", 7)}) == []
    assert push(stream, store, removals=("a",)) == []


def test_unsubscribing_the_wildcard_keeps_only_named_resources() -> None:
    store = store_with("a", "b")
    stream, _ = connected(store, "*", "b")
    assert stream.receive(request(unsubscribe=("*",))).responses == []
    assert push(stream, store, {"a": address("a", 7)}) == []
    assert sent(only(push(stream, store, {"b": address("b", 7)}))).keys() == {"b"}


def test_adding_the_wildcard_later_sends_everything_not_yet_held() -> None:
    store = store_with("a", "b", "c")
    stream, _ = connected(store, "a")
    assert sent(only(stream.receive(request(("*",))).responses)).keys() == {"b", "c"}


def test_types_are_independent_on_one_stream() -> None:
    store = store_with("a")
    store.update(AUTHORIZATION_TYPE_URL, {"ns/p": Authorization(name="p", namespace="ns")})
    stream, _ = connected(store)
    policies = only(stream.receive(request(type_url=AUTHORIZATION_TYPE_URL)).responses)
    assert sent(policies).keys() == {"ns/p"}
    # The Address type is idle (ACKed) while the Authorization response is still in flight.
    assert sent(only(push(stream, store, {"a": address("a", 5)}))).keys() == {"a"}


# ACK, NACK and coalescing


def test_acked_resources_are_not_sent_again_and_only_changes_follow() -> None:
    store = store_with("a", "b")
    stream, first = connected(store)
    response = only(push(stream, store, {"a": address("a", 1), "b": address("b", 20)}))
    assert sent(response).keys() == {"b"}
    assert sent(response)["b"] != sent(first)["b"]


def test_removals_are_pushed_as_removed_resources() -> None:
    store = store_with("a", "b")
    stream, _ = connected(store)
    response = only(push(stream, store, removals=("a",)))
    assert list(response.removed_resources) == ["a"] and not response.resources


def test_changes_while_a_response_is_in_flight_are_coalesced_until_the_ack() -> None:
    store = store_with("a", "b", "c")
    stream = DeltaStream(store)
    first = only(stream.receive(request()).responses)  # never ACKed (yet)
    for octet in range(2, 201):
        assert push(stream, store, {"a": address("a", octet)}) == []
        assert push(stream, store, {"d": address("d", octet)}) == []
    assert stream.pending() == 2 and stream.in_flight() == 1
    follow_up = only(stream.receive(ack(first)).responses)
    assert sent(follow_up).keys() == {"a", "d"}
    assert uid_of(follow_up, "a").workload.addresses == [bytes([10, 0, 0, 200])]
    assert stream.pending() == 0


def test_a_change_reverted_before_the_ack_is_not_sent() -> None:
    store = store_with("a")
    stream = DeltaStream(store)
    first = only(stream.receive(request()).responses)
    assert push(stream, store, {"a": address("a", 2)}) == []
    assert push(stream, store, {"a": address("a", 1)}) == []
    assert stream.receive(ack(first)).responses == []


def test_nack_is_reported_and_the_rejected_version_is_never_resent() -> None:
    store = store_with("a", "b")
    stream, _ = connected(store)
    bad = only(push(stream, store, {"a": address("a", 66)}))
    step = stream.receive(nack(bad, "cannot parse workload a"))
    assert step.responses == []
    assert step.rejection is not None
    assert step.rejection.names == ("a",)
    assert step.rejection.message == "cannot parse workload a"
    assert step.rejection.code == INVALID_ARGUMENT
    assert step.rejection.nonce == bad.nonce
    # Another resource changes: only it is sent, not the rejected "a" again.
    response = only(push(stream, store, {"b": address("b", 5)}))
    assert sent(response).keys() == {"b"}
    # A new version of "a" is sent.
    stream.receive(ack(response))
    response = only(push(stream, store, {"a": address("a", 67)}))
    assert sent(response).keys() == {"a"}


def test_nacked_removal_is_not_resent() -> None:
    store = store_with("a", "b")
    stream, _ = connected(store)
    removal = only(push(stream, store, removals=("a",)))
    assert stream.receive(nack(removal, "no")).rejection is not None
    response = only(push(stream, store, {"b": address("b", 5)}))
    assert sent(response).keys() == {"b"} and not response.removed_resources


def test_an_ack_with_an_unknown_nonce_settles_nothing() -> None:
    store = store_with("a")
    stream = DeltaStream(store)
    first = only(stream.receive(request()).responses)
    stale = DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL, response_nonce="not-" + first.nonce)
    step = stream.receive(stale)
    assert step.responses == [] and step.rejection is None
    assert stream.in_flight() == 1
    assert push(stream, store, {"a": address("a", 3)}) == []


def test_every_response_has_a_fresh_nonce() -> None:
    store = store_with("a")
    stream, first = connected(store)
    nonces = {first.nonce}
    for octet in range(2, 6):
        response = only(push(stream, store, {"a": address("a", octet)}))
        assert response.nonce not in nonces
        nonces.add(response.nonce)
        stream.receive(ack(response))


def test_large_snapshots_are_split_and_the_rest_follows_each_ack() -> None:
    store = store_with(*(f"w{i:03}" for i in range(100)))
    stream = DeltaStream(store, max_response_bytes=1000)
    names: list[str] = []
    response = only(stream.receive(request()).responses)
    while response.resources:
        assert response.ByteSize() < 2000
        names += sent(response)
        follow = stream.receive(ack(response)).responses
        if not follow:
            break
        response = only(follow)
    assert sorted(names) == sorted(store.names(ADDRESS_TYPE_URL))


# Reconnects


def test_reconnect_with_initial_versions_gets_only_the_difference() -> None:
    store = store_with("a", "b", "c")
    _, first = connected(store)
    held = sent(first)
    store.update(ADDRESS_TYPE_URL, {"b": address("b", 22), "d": address("d", 4)}, removals=("c",))
    again = DeltaStream(store)
    response = only(again.receive(request(initial=held)).responses)
    assert sent(response).keys() == {"b", "d"}
    assert list(response.removed_resources) == ["c"]


def test_reconnect_with_nothing_changed_gets_an_empty_first_response() -> None:
    store = store_with("a", "b")
    _, first = connected(store)
    response = only(DeltaStream(store).receive(request(initial=sent(first))).responses)
    assert not response.resources and not response.removed_resources and response.nonce


def test_reconnect_of_a_named_subscription_does_not_resend_what_it_holds() -> None:
    store = store_with("a", "b")
    _, first = connected(store, "a")
    response = only(DeltaStream(store).receive(request(("a",), initial=sent(first))).responses)
    assert not response.resources


def test_reconnect_claiming_a_stale_version_gets_the_current_one() -> None:
    store = store_with("a")
    response = only(DeltaStream(store).receive(request(initial={"a": "0123"})).responses)
    current = store.get(ADDRESS_TYPE_URL, "a")
    assert current is not None and sent(response) == {"a": current.version}


# Errors and identity


def test_unknown_type_url_is_an_error_naming_it() -> None:
    stream = DeltaStream(store_with("a"))
    with pytest.raises(DeltaProtocolError, match=r"type.googleapis.com/envoy\.config\.cluster"):
        stream.receive(request(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"))


def test_request_without_type_url_is_an_error() -> None:
    with pytest.raises(DeltaProtocolError, match="without type_url"):
        DeltaStream(ResourceStore()).receive(DeltaDiscoveryRequest())


def test_a_type_registered_later_is_served() -> None:
    store = store_with("a")
    waypoint_type = TYPE_PREFIX + "istio.workload.Address.Waypoint"
    stream = DeltaStream(store)
    with pytest.raises(DeltaProtocolError):
        stream.receive(request(type_url=waypoint_type))
    store.register_type(waypoint_type)
    assert only(DeltaStream(store).receive(request(type_url=waypoint_type)).responses).nonce


def test_the_node_of_the_first_request_is_kept() -> None:
    stream = DeltaStream(ResourceStore())
    first = request()
    first.node.CopyFrom(
        Node(id="ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local")
    )
    stream.receive(first)
    assert stream.node_id.startswith("ztunnel~10.0.0.1~")
