"""The certificate schedule without a loop: priorities, the fetch limit, refresh, backoff,
expiry and forget, with time as plain numbers."""

from __future__ import annotations

import itertools

import pytest

from ambient_fast.identity import Identity
from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.schedule import (
    Backoff,
    CertificateSchedule,
    Priority,
    StartFetch,
)

T0 = 1_000_000.0
_serials = itertools.count(1)


def ident(name: str) -> Identity:
    return Identity.of("apps", name)


def cert(identity: Identity, not_before: float, not_after: float) -> VerifiedCertificate:
    """Only the times matter to the schedule; the PEM fields are never read here."""
    return VerifiedCertificate(identity, b"", b"", b"", not_before, not_after, next(_serials))


def schedule(max_in_flight: int = 8, jitter: float = 0.0) -> CertificateSchedule:
    return CertificateSchedule(max_in_flight, Backoff(jitter=jitter), rand=lambda: 1.0)


def started(s: CertificateSchedule, now: float = T0) -> list[StartFetch]:
    return s.poll(now).start


def names(starts: list[StartFetch]) -> list[str]:
    return [f.identity.service_account for f in starts]


def test_higher_priority_first_when_a_slot_frees() -> None:
    s = schedule(max_in_flight=1)
    s.request(ident("id1"), Priority.BACKGROUND, T0)
    [first] = started(s)
    for name, priority in [
        ("id2", Priority.BACKGROUND),
        ("id3", Priority.WARMUP),
        ("id4", Priority.REAL_TIME),
    ]:
        s.request(ident(name), priority, T0)
        assert started(s) == []  # the one slot is busy
    order = [first]
    while order[-1].identity != ident("id2"):
        last = order[-1]
        s.succeeded(last.identity, last.fetch_id, cert(last.identity, T0, T0 + 100), T0)
        [nxt] = started(s)
        order.append(nxt)
    assert names(order) == ["id1", "id4", "id3", "id2"]
    assert [f.priority for f in order] == [
        Priority.BACKGROUND,
        Priority.REAL_TIME,
        Priority.WARMUP,
        Priority.BACKGROUND,
    ]


def test_at_most_eight_fetches_in_flight() -> None:
    s = schedule()
    for i in range(12):
        s.request(ident(f"w{i}"), Priority.WARMUP, T0)
    first = started(s)
    assert len(first) == 8 and s.in_flight == 8
    assert names(first) == [f"w{i}" for i in range(8)]  # FIFO among equals
    assert started(s) == []
    s.failed(first[0].identity, first[0].fetch_id, "CA down", T0)
    assert names(started(s)) == ["w8"]
    assert s.in_flight == 8


def test_real_time_jumps_a_full_queue() -> None:
    s = schedule()
    for i in range(10):
        s.request(ident(f"w{i}"), Priority.WARMUP, T0)
    running = started(s)
    s.request(ident("conn"), Priority.REAL_TIME, T0)
    assert started(s) == []  # the limit holds, even for a connection
    done = running[0]
    s.succeeded(done.identity, done.fetch_id, cert(done.identity, T0, T0 + 100), T0)
    [nxt] = started(s)
    assert nxt.identity == ident("conn") and nxt.priority is Priority.REAL_TIME


def test_real_time_upgrades_a_queued_warmup() -> None:
    s = schedule(max_in_flight=1)
    s.request(ident("busy"), Priority.WARMUP, T0)
    [busy] = started(s)
    s.request(ident("a"), Priority.WARMUP, T0)
    s.request(ident("b"), Priority.WARMUP, T0)
    s.request(ident("b"), Priority.REAL_TIME, T0)  # a connection needs b now
    s.request(ident("a"), Priority.BACKGROUND, T0)  # a lower priority never downgrades
    s.failed(busy.identity, busy.fetch_id, "CA down", T0)
    [nxt] = started(s)
    assert nxt.identity == ident("b") and nxt.priority is Priority.REAL_TIME
    s.succeeded(nxt.identity, nxt.fetch_id, cert(nxt.identity, T0, T0 + 100), T0)
    [after] = started(s)
    assert after.identity == ident("a") and after.priority is Priority.WARMUP


def test_a_request_in_flight_or_certified_starts_nothing() -> None:
    s = schedule()
    s.request(ident("a"), Priority.WARMUP, T0)
    [fetch] = started(s)
    s.request(ident("a"), Priority.REAL_TIME, T0)
    assert started(s) == [] and s.in_flight == 1
    s.succeeded(fetch.identity, fetch.fetch_id, cert(fetch.identity, T0, T0 + 100), T0)
    s.request(ident("a"), Priority.REAL_TIME, T0 + 1)
    assert started(s, T0 + 1) == [] and s.in_flight == 0


def test_refresh_at_half_of_the_lifetime() -> None:
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    [fetch] = started(s)
    s.succeeded(a, fetch.fetch_id, cert(a, T0, T0 + 86400), T0)
    assert s.next_wakeup() == T0 + 43200
    assert started(s, T0 + 43199.9) == []
    [refresh] = started(s, T0 + 43200)
    assert refresh.identity == a and refresh.priority is Priority.BACKGROUND
    assert s.certificate(a, T0 + 43200) is not None  # served while it refreshes


def test_refresh_half_life_counts_from_receipt_when_not_before_is_backdated() -> None:
    # Our CA backdates notBefore a minute for clock skew; a 10 s certificate would otherwise
    # look half spent on arrival and be fetched again immediately, forever.
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    [fetch] = started(s)
    s.succeeded(a, fetch.fetch_id, cert(a, T0 - 60, T0 + 10), T0)
    assert s.next_wakeup() == T0 + 5


def test_backoff_doubles_from_one_second_up_to_150() -> None:
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    now, delays = T0, []
    for _ in range(11):
        [fetch] = started(s, now)
        retry = s.failed(a, fetch.fetch_id, "CA down", now)
        assert retry is not None and retry.kept is None
        delays.append(retry.retry_at - now)
        assert s.next_wakeup() == retry.retry_at
        assert started(s, retry.retry_at - 0.001) == []
        now = retry.retry_at
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 150, 150, 150]


def test_backoff_jitter_only_shortens() -> None:
    backoff = Backoff(jitter=0.1)
    assert backoff.delay(1, 0.0) == 1.0
    assert backoff.delay(1, 1.0) == pytest.approx(0.9)
    assert backoff.delay(40, 0.5) == pytest.approx(150 * 0.95)
    assert backoff.delay(10_000, 0.0) == 150.0  # no overflow after days of failures


def test_success_resets_the_backoff() -> None:
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    for _ in range(3):
        [fetch] = started(s, s.next_wakeup() or T0)
        s.failed(a, fetch.fetch_id, "CA down", s.next_wakeup() or T0)
    now = s.next_wakeup()
    assert now is not None
    [fetch] = started(s, now)
    s.succeeded(a, fetch.fetch_id, cert(a, now, now + 100), now)
    [refresh] = started(s, now + 50)
    retry = s.failed(a, refresh.fetch_id, "CA down", now + 50)
    assert retry is not None and retry.retry_at == now + 51 and retry.failures == 1


def test_failed_refresh_keeps_the_certificate_until_it_expires() -> None:
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    [fetch] = started(s)
    old = cert(a, T0, T0 + 100)
    s.succeeded(a, fetch.fetch_id, old, T0)
    now, attempts = T0 + 50, []
    while now < old.not_after:  # refresh at 50, retries at 51, 53, 57, 65, 81 all fail
        [refresh] = started(s, now)
        assert refresh.priority is Priority.BACKGROUND
        retry = s.failed(a, refresh.fetch_id, "CA down", now)
        assert retry is not None and retry.kept is old
        assert s.certificate(a, now) is old
        attempts.append(now - T0)
        now = retry.retry_at
    assert attempts == [50, 51, 53, 57, 65, 81]
    assert s.certificate(a, T0 + 99.999) is old
    assert s.certificate(a, T0 + 100) is None  # never served past its expiry
    assert s.poll(T0 + 100).expired == [old]


def test_expiry_is_reported_once_and_the_retry_becomes_warmup() -> None:
    s = schedule(max_in_flight=1)
    a, b = ident("a"), ident("b")
    s.request(a, Priority.WARMUP, T0)
    [fetch] = started(s)
    s.succeeded(a, fetch.fetch_id, old := cert(a, T0, T0 + 100), T0)
    [refresh] = started(s, T0 + 50)
    retry = s.failed(a, refresh.fetch_id, "CA down", T0 + 50)
    assert retry is not None and retry.kept is old
    # The CA stays down: the queued retry is Background while the old certificate serves...
    s.request(b, Priority.WARMUP, T0 + 50.5)
    [fb] = started(s, T0 + 50.5)
    # ...and once it expired, getting a certificate back is a Warmup like any first fetch.
    polled = s.poll(T0 + 100)
    assert polled.expired == [old] and polled.start == []
    assert s.poll(T0 + 100).expired == []  # reported once
    s.failed(b, fb.fetch_id, "CA down", T0 + 100)
    [nxt] = started(s, T0 + 100)
    assert nxt.identity == a and nxt.priority is Priority.WARMUP


def test_real_time_pulls_a_retry_forward_no_sooner_than_a_second_after_failure() -> None:
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    now = T0
    for _ in range(5):  # backoff grows to 16 s
        [fetch] = started(s, now)
        retry = s.failed(a, fetch.fetch_id, "CA down", now)
        assert retry is not None
        now = retry.retry_at
    failed_at = now - 16
    s.request(a, Priority.REAL_TIME, failed_at + 0.2)
    assert s.next_wakeup() == failed_at + 1
    assert started(s, failed_at + 0.9) == []
    [fetch] = started(s, failed_at + 1)
    assert fetch.priority is Priority.REAL_TIME


def test_forget_frees_the_slot_and_ignores_the_late_answer() -> None:
    s = schedule(max_in_flight=1)
    a, b = ident("a"), ident("b")
    s.request(a, Priority.WARMUP, T0)
    [fetch] = started(s)
    s.request(b, Priority.WARMUP, T0)
    forgotten = s.forget(a)
    assert forgotten is not None and forgotten.fetch_id == fetch.fetch_id
    assert a not in s and s.in_flight == 0
    assert names(started(s)) == ["b"]
    assert not s.succeeded(a, fetch.fetch_id, cert(a, T0, T0 + 100), T0)
    assert s.certificate(a, T0) is None
    assert s.forget(a) is None


def test_forget_drops_the_certificate_and_its_refresh() -> None:
    s = schedule()
    a = ident("a")
    s.request(a, Priority.WARMUP, T0)
    [fetch] = started(s)
    s.succeeded(a, fetch.fetch_id, issued := cert(a, T0, T0 + 100), T0)
    forgotten = s.forget(a)
    assert forgotten is not None and forgotten.certificate is issued and forgotten.fetch_id is None
    assert s.next_wakeup() is None
    assert s.poll(T0 + 200).start == [] and s.poll(T0 + 200).expired == []
    # Back on the node later: a fresh start, not the old entry's leftovers.
    s.request(a, Priority.WARMUP, T0 + 300)
    [again] = started(s, T0 + 300)
    assert again.identity == a and again.fetch_id != fetch.fetch_id


def test_status_names_the_states() -> None:
    s = schedule()
    a, b, c = ident("a"), ident("b"), ident("c")
    for i in (a, b, c):
        s.request(i, Priority.WARMUP, T0)
    fa, fb, _ = started(s)
    s.succeeded(a, fa.fetch_id, cert(a, T0, T0 + 100), T0)
    s.failed(b, fb.fetch_id, "PERMISSION_DENIED", T0)
    states = {st.identity: st for st in s.status(T0)}
    assert states[a].state == "Available" and states[a].next_fetch == T0 + 50
    assert states[b].state == "Unavailable" and states[b].last_error == "PERMISSION_DENIED"
    assert states[b].failures == 1 and states[b].priority is Priority.WARMUP
    assert states[c].state == "Initializing" and states[c].fetching
