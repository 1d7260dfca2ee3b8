"""The delta ADS client's rules without sockets: responses in, (N)ACKs and store changes out."""

from __future__ import annotations

import ipaddress

import pytest
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from ambient_fast.state import StateStore
from ambient_fast.xds.proto.authorization_pb2 import DENY, NAMESPACE, Authorization, Rule, Scope
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryResponse, Resource
from ambient_fast.xds.proto.workload_pb2 import Address, Service, Workload
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, make_resource
from ambient_fast.xds.subscription import (
    INVALID_ARGUMENT,
    MAX_DETAILED_REJECTIONS,
    Backoff,
    DeltaSubscription,
    NodeIdentity,
    describe_rejections,
)

NODE = NodeIdentity(
    instance_ip="10.0.0.1",
    pod_name="ztunnel-abc",
    pod_namespace="istio-system",
    node_name="node-a",
    cluster_id="Kubernetes",
)


def workload(uid: str, ip: str = "10.1.0.1", revision: str = "v1") -> Address:
    packed = ipaddress.ip_address(ip).packed
    return Address(
        workload=Workload(
            uid=uid, name=uid, namespace="apps", addresses=[packed], canonical_revision=revision
        )
    )


def response(
    *resources: Resource,
    removed: tuple[str, ...] = (),
    type_url: str = ADDRESS_TYPE_URL,
    nonce: str = "1",
) -> DeltaDiscoveryResponse:
    return DeltaDiscoveryResponse(
        type_url=type_url, resources=resources, removed_resources=removed, nonce=nonce
    )


def resource(name: str, message: Message) -> Resource:
    return make_resource(name, message)


@pytest.fixture
def store() -> StateStore:
    return StateStore()


@pytest.fixture
def subscription(store: StateStore) -> DeltaSubscription:
    return DeltaSubscription(store, NODE.node())


def test_first_requests_subscribe_wildcard_to_both_types_as_ztunnel(
    subscription: DeltaSubscription,
) -> None:
    requests = subscription.start()
    assert [r.type_url for r in requests] == [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]
    for request in requests:
        assert list(request.resource_names_subscribe) == []  # legacy wildcard, as ztunnel
        assert dict(request.initial_resource_versions) == {}
        assert not request.response_nonce
        assert (
            request.node.id
            == "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        )
        assert dict(request.node.metadata) == {
            "NAME": "ztunnel-abc",
            "NAMESPACE": "istio-system",
            "INSTANCE_IPS": "10.0.0.1",
            "NODE_NAME": "node-a",
            "CLUSTER_ID": "Kubernetes",
        }


def test_a_valid_response_is_applied_and_acked(
    subscription: DeltaSubscription, store: StateStore
) -> None:
    received = subscription.receive(response(resource("w1", workload("w1")), nonce="7"))
    assert received.reply.type_url == ADDRESS_TYPE_URL
    assert received.reply.response_nonce == "7"
    assert not received.nack and not received.reply.HasField("error_detail")
    assert received.applied == ("w1",)
    found = store.workload_by_ip("", "10.1.0.1")
    assert found is not None and found.uid == "w1"


def test_bad_resources_are_nacked_by_name_and_the_good_ones_applied(
    subscription: DeltaSubscription, store: StateStore
) -> None:
    subscription.receive(response(resource("w2", workload("w2", revision="v1")), nonce="1"))
    bad_ip = Address(workload=Workload(uid="w3", addresses=[b"\x0a\x00\x01"]))
    garbage = Resource(
        name="w4", version="x", resource=Any(type_url=ADDRESS_TYPE_URL, value=b"\xff\xff")
    )
    wrong_body = resource("w5", Authorization(name="p", namespace="ns"))
    received = subscription.receive(
        response(
            resource("w1", workload("w1")),
            resource("w2", workload("w2", ip="10.1.0.2", revision="v2")),
            resource("w3", bad_ip),
            garbage,
            wrong_body,
            resource("apps/no-ns", Address(service=Service(hostname="h"))),
            nonce="2",
        )
    )
    assert received.nack
    detail = received.reply.error_detail
    assert detail.code == INVALID_ARGUMENT
    assert received.reply.response_nonce == "2"
    assert set(received.rejected) == {"w3", "w4", "w5", "apps/no-ns"}
    assert "w3: workload w3: addresses[0]: 3 bytes, expected 4 or 16" in detail.message
    assert "w4: undecodable istio.workload.Address" in detail.message
    assert "w5: body is 'type.googleapis.com/istio.security.Authorization'" in detail.message
    assert "namespace and hostname are required" in detail.message
    # The good ones are in the store and held at their versions; the bad ones are not held.
    assert set(received.applied) == {"w1", "w2"}
    assert store.workload_by_uid("w1") is not None
    w2 = store.workload_by_uid("w2")
    assert w2 is not None and w2.canonical_revision == "v2"
    assert set(subscription.held(ADDRESS_TYPE_URL)) == {"w1", "w2"}


def test_an_invalid_update_keeps_the_previous_version(
    subscription: DeltaSubscription, store: StateStore
) -> None:
    first = resource("w1", workload("w1", revision="v1"))
    subscription.receive(response(first))
    broken = Address(workload=Workload(uid="w1", addresses=[b"\x01"], canonical_revision="v2"))
    received = subscription.receive(response(resource("w1", broken), nonce="2"))
    assert received.nack
    w1 = store.workload_by_uid("w1")
    assert w1 is not None and w1.canonical_revision == "v1"
    assert subscription.held(ADDRESS_TYPE_URL) == {"w1": first.version}


def test_removals_are_applied(subscription: DeltaSubscription, store: StateStore) -> None:
    subscription.receive(
        response(resource("w1", workload("w1")), resource("w2", workload("w2", "10.1.0.2")))
    )
    received = subscription.receive(response(removed=("w1", "never-held"), nonce="2"))
    assert not received.nack
    assert received.removed == ("w1", "never-held")
    assert store.workload_by_uid("w1") is None
    assert store.workload_by_ip("", "10.1.0.1") is None
    assert set(subscription.held(ADDRESS_TYPE_URL)) == {"w2"}


def test_a_new_stream_resumes_with_the_versions_held(subscription: DeltaSubscription) -> None:
    w1, w2 = resource("w1", workload("w1")), resource("w2", workload("w2", "10.1.0.2"))
    subscription.receive(response(w1, w2))
    subscription.receive(response(removed=("w2",), nonce="2"))
    policy = resource("ns/p", Authorization(name="p", namespace="ns"))
    subscription.receive(response(policy, type_url=AUTHORIZATION_TYPE_URL, nonce="3"))
    # A rejected resource is not claimed: the server must resend whatever it now has.
    bad = Address(workload=Workload(uid="w3", addresses=[b""]))
    subscription.receive(response(resource("w3", bad), nonce="4"))

    again = {r.type_url: dict(r.initial_resource_versions) for r in subscription.start()}
    assert again == {
        ADDRESS_TYPE_URL: {"w1": w1.version},
        AUTHORIZATION_TYPE_URL: {"ns/p": policy.version},
    }


def test_ready_after_the_first_response_of_every_type(subscription: DeltaSubscription) -> None:
    assert not subscription.ready
    first = subscription.receive(response(resource("w1", workload("w1"))))
    assert not first.became_ready and not subscription.ready
    # An empty first response counts (the server answers even with nothing to send), and a
    # NACKed one too: the valid part is applied and the rest will not be resent as it is.
    bad = Authorization(name="p", namespace="ns", scope=Scope.ValueType(42))
    second = subscription.receive(
        response(resource("ns/p", bad), type_url=AUTHORIZATION_TYPE_URL, nonce="2")
    )
    assert second.nack
    assert second.reply.error_detail.message == "ns/p: authorization ns/p: scope: unknown value 42"
    assert second.became_ready and subscription.ready
    later = subscription.receive(response(type_url=AUTHORIZATION_TYPE_URL, nonce="3"))
    assert not later.became_ready and subscription.ready


def test_a_type_never_subscribed_is_nacked(
    subscription: DeltaSubscription, store: StateStore
) -> None:
    received = subscription.receive(response(type_url="type.googleapis.com/other.Thing"))
    assert received.nack
    assert "was not subscribed" in received.reply.error_detail.message
    assert not subscription.ready


def test_a_name_sent_twice_or_both_updated_and_removed_is_refused(
    subscription: DeltaSubscription, store: StateStore
) -> None:
    received = subscription.receive(
        response(
            resource("w1", workload("w1")),
            resource("w1", workload("w1", revision="v2")),
            resource("w2", workload("w2", "10.1.0.2")),
            resource("w3", workload("w3", "10.1.0.3")),
            removed=("w2",),
        )
    )
    assert received.rejected == {
        "w1": "sent twice in one response",
        "w2": "both updated and removed in one response",
    }
    assert store.workload_by_uid("w1") is None and store.workload_by_uid("w2") is None
    assert received.applied == ("w3",)


def test_policies_are_applied_and_compiled(
    subscription: DeltaSubscription, store: StateStore
) -> None:
    deny = Authorization(
        name="deny-all", namespace="apps", scope=NAMESPACE, action=DENY, rules=[Rule()]
    )
    received = subscription.receive(
        response(resource("apps/deny-all", deny), type_url=AUTHORIZATION_TYPE_URL)
    )
    assert not received.nack
    policy = store.policy("apps/deny-all")
    assert policy is not None and policy.key == "apps/deny-all"
    w = store.apply(ADDRESS_TYPE_URL, {"w1": workload("w1")})
    assert not w.rejected
    w1 = store.workload_by_uid("w1")
    assert w1 is not None
    assert [p.policy.key for p in store.policies_for(w1)] == ["apps/deny-all"]


def test_nack_detail_is_bounded() -> None:
    rejected = {f"w{i:03}": "bad" for i in range(MAX_DETAILED_REJECTIONS + 5)}
    text = describe_rejections(rejected)
    assert text.count(": bad") == MAX_DETAILED_REJECTIONS
    assert text.endswith("and 5 more")


def test_backoff_doubles_from_10ms_to_15s_and_resets() -> None:
    backoff = Backoff()
    delays = [backoff.next() for _ in range(13)]
    assert delays[:4] == [0.01, 0.02, 0.04, 0.08]
    assert delays[-1] == 15.0 and max(delays) == 15.0
    backoff.reset()
    assert backoff.next() == 0.01
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0)
