"""ZDS, the proxy's side, without sockets: requests as bytes, netns fds as pipe ends (each pipe is
its own inode, standing in for a namespace), and every refused fd checked closed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ambient_fast.xds.proto import zds_pb2
from ambient_fast.ztunnel.config import WorkloadInfo
from ambient_fast.ztunnel.zds import (
    AddPod,
    DelPod,
    KeepPod,
    Packet,
    PodStart,
    SnapshotSent,
    Step,
    ZdsSession,
    encode_request,
)

INFO = zds_pb2.WorkloadInfo(name="sleep-1", namespace="apps", service_account="sleep")


@pytest.fixture
def fds() -> Iterator[list[int]]:
    """Fds a test opened; whatever the session did not close is closed at the end."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        try:
            os.close(fd)
        except OSError:
            pass


def new_netns(fds: list[int]) -> int:
    read, write = os.pipe()
    fds.extend((read, write))
    os.close(write)
    return read


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def add(uid: str, *netns: int, info: zds_pb2.WorkloadInfo | None = INFO) -> Packet:
    request = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid=uid, workload_info=info))
    return Packet(request.SerializeToString(), netns)


def keep(uid: str) -> Packet:
    return Packet(encode_request(KeepPod(uid)))


def delete(uid: str, *fds: int) -> Packet:
    return Packet(encode_request(DelPod(uid)), fds)


SNAPSHOT = Packet(encode_request(SnapshotSent()))


def ack_error(ack: bytes | None) -> str:
    assert ack is not None
    response = zds_pb2.WorkloadResponse.FromString(ack)
    assert response.WhichOneof("payload") == "ack"
    return response.ack.error


def start_of(step: Step) -> PodStart:
    assert step.start is not None and step.ack is None
    return step.start


def run_add(session: ZdsSession, uid: str, netns: int) -> Step:
    step = session.receive(add(uid, netns))
    assert ack_error(session.started(start_of(step))) == ""
    return step


def after_snapshot(session: ZdsSession) -> ZdsSession:
    session.connected()
    assert ack_error(session.receive(SNAPSHOT).ack) == ""
    return session


def test_the_proxy_speaks_first_with_hello_v1() -> None:
    hello = zds_pb2.ZdsHello.FromString(ZdsSession().connected())
    assert hello.version == zds_pb2.V1


def test_an_add_starts_the_pod_and_is_acked_once_started(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    netns = new_netns(fds)
    step = session.receive(add("uid-1", netns))
    start = start_of(step)
    assert (start.uid, start.netns, step.stop) == ("uid-1", netns, ())
    assert start.info == WorkloadInfo("apps", "sleep-1", "sleep")
    assert "uid-1" not in session.pods  # not before it runs
    assert ack_error(session.started(start)) == ""
    assert session.pods["uid-1"].info.service_account == "sleep"
    assert is_open(netns)  # the proxy owns it now


@pytest.mark.parametrize("count", [0, 2])
def test_an_add_needs_exactly_one_fd_and_closes_the_others(fds: list[int], count: int) -> None:
    session = after_snapshot(ZdsSession())
    netns = [new_netns(fds) for _ in range(count)]
    step = session.receive(add("uid-1", *netns))
    assert step.start is None and step.stop == ()
    error = ack_error(step.ack)
    assert "add uid-1" in error and "exactly 1 netns fd" in error
    assert not any(is_open(fd) for fd in netns)
    assert not session.pods


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"\xff\xff\xff", "malformed WorkloadRequest"),
        (b"", "without a known payload"),
        (b"\x22\x00", "without a known payload"),  # field 4: Istio's old NoSnapshotPresent
    ],
)
def test_malformed_and_unknown_requests_get_an_error_and_lose_their_fds(
    fds: list[int], packet: bytes, expected: str
) -> None:
    session = after_snapshot(ZdsSession())
    netns = new_netns(fds)
    step = session.receive(Packet(packet, (netns,)))
    assert expected in ack_error(step.ack)
    assert step.start is None and not is_open(netns)


def test_a_truncated_packet_is_refused(fds: list[int]) -> None:
    netns = new_netns(fds)
    packet = add("uid-1", netns)
    step = ZdsSession().receive(Packet(packet.data, packet.fds, truncated=True))
    assert "truncated" in ack_error(step.ack) and not is_open(netns)


def test_an_add_without_workload_info_names_the_uid(fds: list[int]) -> None:
    netns = new_netns(fds)
    step = ZdsSession().receive(add("uid-1", netns, info=None))
    assert "add 'uid-1': workload_info is required" in ack_error(step.ack)
    assert not is_open(netns)


def test_requests_other_than_add_carry_no_fds(fds: list[int]) -> None:
    netns = new_netns(fds)
    step = after_snapshot(ZdsSession()).receive(delete("uid-1", netns))
    assert "del uid-1: 1 unexpected fds" in ack_error(step.ack)
    assert step.stop == () and not is_open(netns)


def test_a_uid_is_required() -> None:
    assert "keep without a uid" in ack_error(ZdsSession().receive(keep("")).ack)


def test_the_same_pod_and_netns_again_is_a_no_op(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    netns = new_netns(fds)
    run_add(session, "uid-1", netns)
    again = os.dup(netns)
    fds.append(again)
    step = session.receive(add("uid-1", again))
    assert ack_error(step.ack) == "" and step.start is None and step.stop == ()
    assert not is_open(again) and is_open(netns)


def test_the_same_pod_in_a_new_netns_replaces_its_proxy(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    run_add(session, "uid-1", new_netns(fds))
    fresh = new_netns(fds)
    step = session.receive(add("uid-1", fresh))
    assert step.stop == ("uid-1",) and start_of(step).netns == fresh
    session.started(start_of(step))
    assert session.pods["uid-1"].netns == (os.fstat(fresh).st_dev, os.fstat(fresh).st_ino)


def test_a_second_add_while_the_first_is_starting_is_refused(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    start_of(session.receive(add("uid-1", new_netns(fds))))
    second = new_netns(fds)
    step = session.receive(add("uid-1", second))
    assert "already in progress" in ack_error(step.ack) and not is_open(second)


def test_a_failed_start_names_the_pod_and_installs_nothing(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    start = start_of(session.receive(add("uid-1", new_netns(fds))))
    error = ack_error(session.start_failed(start, "setns: Invalid argument"))
    assert error == "add uid-1 (apps/sleep-1): setns: Invalid argument"
    assert not session.pods
    # Nothing pending either: the agent may retry.
    assert start_of(session.receive(add("uid-1", new_netns(fds)))).uid == "uid-1"


def test_del_stops_the_pod_and_an_unknown_uid_is_fine(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    run_add(session, "uid-1", new_netns(fds))
    step = session.receive(delete("uid-1"))
    assert step.stop == ("uid-1",) and ack_error(step.ack) == ""
    assert not session.pods
    step = session.receive(delete("uid-1"))
    assert step.stop == () and ack_error(step.ack) == ""


def test_after_a_reconnect_the_snapshot_removes_pods_neither_added_nor_kept(
    fds: list[int],
) -> None:
    session = after_snapshot(ZdsSession())
    netns = {uid: new_netns(fds) for uid in ("kept", "readded", "gone")}
    for uid, fd in netns.items():
        run_add(session, uid, fd)
    session.connected()
    assert not session.snapshot_received
    assert ack_error(session.receive(keep("kept")).ack) == ""
    # The agent re-adds with a fresh fd of the same namespace: no restart.
    again = os.dup(netns["readded"])
    fds.append(again)
    step = session.receive(add("readded", again))
    assert step.start is None and step.stop == () and ack_error(step.ack) == ""
    step = session.receive(SNAPSHOT)
    assert step.stop == ("gone",) and ack_error(step.ack) == ""
    assert set(session.pods) == {"kept", "readded"} and session.snapshot_received


def test_a_del_before_the_snapshot_takes_back_the_keep(fds: list[int]) -> None:
    session = after_snapshot(ZdsSession())
    run_add(session, "uid-1", new_netns(fds))
    session.connected()
    session.receive(keep("uid-1"))
    step = session.receive(delete("uid-1"))
    assert step.stop == () and ack_error(step.ack) == ""  # the reconciliation stops it
    assert session.receive(SNAPSHOT).stop == ("uid-1",)


def test_keep_after_the_snapshot_and_a_second_snapshot_are_refused() -> None:
    session = after_snapshot(ZdsSession())
    assert "only allowed before snapshot_sent" in ack_error(session.receive(keep("a")).ack)
    assert "snapshot_sent twice" in ack_error(session.receive(SNAPSHOT).ack)


def test_requests_encode_as_istio_numbers_them() -> None:
    info = WorkloadInfo("apps", "sleep-1", "sleep")
    added = zds_pb2.WorkloadRequest.FromString(encode_request(AddPod("u", info, -1)))
    assert added.add.uid == "u" and added.add.workload_info == INFO
    # del is field 2 with its uid at 2, keep is 5, snapshot_sent is 3 (istio/ztunnel zds.proto).
    assert encode_request(DelPod("u")) == b"\x12\x03\x12\x01u"
    assert encode_request(KeepPod("u")) == b"\x2a\x03\x0a\x01u"
    assert encode_request(SnapshotSent()) == b"\x1a\x00"
