"""Which workload certificate to fetch when: a sans-IO schedule (no clock, no I/O of its own).

`CertificateSchedule` keeps one entry per identity the node needs: its current certificate, a
queued fetch (priority, due time) or the fetch in flight. Callers feed it requests and fetch
outcomes with the current time; `poll(now)` answers which fetches to start and which
certificates expired; `next_wakeup()` says when to poll again. Rules (reference 02, ztunnel's
SecretManager): RealTime > Warmup > Background, at most `max_in_flight` fetches, refresh at
half of the lifetime, on failure keep the old certificate until it expires and retry with
exponential backoff capped at 150 s, forget drops everything at once.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.spiffe import Identity

# ztunnel's SecretManager runs at most 8 CA requests at once (reference 02).
DEFAULT_MAX_IN_FLIGHT = 8
# Retry after a failed fetch: doubling from 1 s (our choice) up to 150 s (reference 02).
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_BACKOFF_CAP = 150.0


class Priority(IntEnum):
    """Why a certificate is fetched; a higher value is fetched first (ztunnel's order)."""

    BACKGROUND = 0  # rotation of a certificate that is still valid
    WARMUP = 1  # prefetch: an identity appeared on this node, or a retry without a certificate
    REAL_TIME = 2  # a connection is waiting for it


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number `failures`: initial * factor^(failures-1), capped.

    `jitter` shortens each delay by up to that fraction, so identities that failed together
    (the CA was down) do not all retry in the same instant; the cap is never exceeded.
    """

    initial: float = DEFAULT_BACKOFF_INITIAL
    factor: float = 2.0
    cap: float = DEFAULT_BACKOFF_CAP
    jitter: float = 0.1

    def delay(self, failures: int, rand: float) -> float:
        exponent = min(max(failures - 1, 0), 64)  # beyond that the cap applies anyway
        return min(self.cap, self.initial * self.factor**exponent) * (1.0 - self.jitter * rand)


@dataclass(frozen=True, slots=True)
class StartFetch:
    """Fetch a certificate for `identity`; report back with `fetch_id`."""

    identity: Identity
    fetch_id: int
    priority: Priority


@dataclass(frozen=True, slots=True)
class Poll:
    start: list[StartFetch]
    expired: list[VerifiedCertificate]  # expired without a replacement; no longer served


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed fetch: the retry time and the certificate kept meanwhile (None if none)."""

    identity: Identity
    failures: int
    retry_at: float
    kept: VerifiedCertificate | None


@dataclass(frozen=True, slots=True)
class Forgotten:
    identity: Identity
    fetch_id: int | None  # the fetch in flight, to cancel
    certificate: VerifiedCertificate | None  # what was served until now


@dataclass(frozen=True, slots=True)
class IdentityStatus:
    """One identity as an admin dump shows it (ztunnel's Initializing/Available/Unavailable)."""

    identity: Identity
    state: str
    certificate: VerifiedCertificate | None
    fetching: bool
    priority: Priority | None  # of the queued fetch
    next_fetch: float | None
    failures: int
    last_error: str | None


class _Entry:
    __slots__ = (
        "certificate",
        "due",
        "failures",
        "fetch_id",
        "identity",
        "last_error",
        "last_failure_at",
        "priority",
        "queued",
        "ticket",
    )

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.certificate: VerifiedCertificate | None = None
        self.queued = False
        self.priority = Priority.BACKGROUND
        self.due = 0.0
        self.ticket = 0  # identifies the current queue position; older heap items are stale
        self.fetch_id: int | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.last_failure_at: float | None = None


class CertificateSchedule:
    """Certificates and fetches per identity; every method takes the time it happens at."""

    def __init__(
        self,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.backoff = backoff or Backoff()
        self._rand = rand
        self._entries: dict[Identity, _Entry] = {}
        self._in_flight = 0
        self._counter = itertools.count(1)
        # Due now: (-priority, due, ticket, identity); due later: (due, ticket, identity).
        self._ready: list[tuple[int, float, int, Identity]] = []
        self._waiting: list[tuple[float, int, Identity]] = []
        # Certificates by expiry: (not_after, serial, identity).
        self._expiries: list[tuple[float, int, Identity]] = []

    def __contains__(self, identity: Identity) -> bool:
        return identity in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def certificate(self, identity: Identity, now: float) -> VerifiedCertificate | None:
        """The certificate to use for `identity` now, if there is a valid one."""
        entry = self._entries.get(identity)
        if entry is None or entry.certificate is None or not entry.certificate.valid_at(now):
            return None
        return entry.certificate

    def last_error(self, identity: Identity) -> str | None:
        entry = self._entries.get(identity)
        return entry.last_error if entry is not None else None

    def request(self, identity: Identity, priority: Priority, now: float) -> None:
        """Manage `identity` (new: queue a fetch); a higher priority upgrades a queued fetch."""
        entry = self._entries.get(identity)
        if entry is None:
            entry = self._entries[identity] = _Entry(identity)
            self._queue(entry, priority, now, now)
            return
        if entry.fetch_id is not None or self.certificate(identity, now) is not None:
            return  # the fetch in flight answers; a valid certificate needs no fetch now
        due = entry.due
        if priority is Priority.REAL_TIME:
            # A waiting connection pulls a retry forward, but to no sooner than the initial
            # backoff after the last failure: a down CA is asked at most once a second.
            floor = now
            if entry.last_failure_at is not None:
                floor = max(now, entry.last_failure_at + self.backoff.initial)
            due = min(due, floor)
        if priority > entry.priority or due < entry.due:
            self._queue(entry, max(priority, entry.priority), due, now)

    def forget(self, identity: Identity) -> Forgotten | None:
        """Stop managing `identity`: its queued fetch, fetch in flight and certificate go."""
        entry = self._entries.pop(identity, None)
        if entry is None:
            return None
        if entry.fetch_id is not None:
            self._in_flight -= 1
        return Forgotten(identity, entry.fetch_id, entry.certificate)

    def poll(self, now: float) -> Poll:
        """Fetches to start now (highest priority first, within the limit) and expiries."""
        while self._waiting and self._waiting[0][0] <= now:
            due, ticket, identity = heapq.heappop(self._waiting)
            entry = self._queued(identity, ticket)
            if entry is not None:
                heapq.heappush(self._ready, (-entry.priority, due, ticket, identity))
        expired = self._expire(now)
        start: list[StartFetch] = []
        while self._ready and self._in_flight < self.max_in_flight:
            _, _, ticket, identity = heapq.heappop(self._ready)
            entry = self._queued(identity, ticket)
            if entry is None:
                continue
            entry.queued = False
            entry.fetch_id = next(self._counter)
            self._in_flight += 1
            start.append(StartFetch(identity, entry.fetch_id, entry.priority))
        return Poll(start, expired)

    def next_wakeup(self) -> float | None:
        """When `poll` next has something to do (None: only after a request or an outcome)."""
        times: list[float] = []
        while self._waiting and self._queued(self._waiting[0][2], self._waiting[0][1]) is None:
            heapq.heappop(self._waiting)
        if self._waiting:
            times.append(self._waiting[0][0])
        while self._expiries and not self._serving(*self._expiries[0]):
            heapq.heappop(self._expiries)
        if self._expiries:
            times.append(self._expiries[0][0])
        if self._in_flight < self.max_in_flight:
            while self._ready and self._queued(self._ready[0][3], self._ready[0][2]) is None:
                heapq.heappop(self._ready)
            if self._ready:
                times.append(self._ready[0][1])
        return min(times, default=None)

    def succeeded(
        self, identity: Identity, fetch_id: int, certificate: VerifiedCertificate, now: float
    ) -> bool:
        """Install a fetched (verified) certificate; False if the fetch is no longer wanted."""
        entry = self._finish(identity, fetch_id)
        if entry is None:
            return False
        entry.certificate = certificate
        entry.failures = 0
        entry.last_error = None
        entry.last_failure_at = None
        heapq.heappush(self._expiries, (certificate.not_after, certificate.serial, identity))
        # Half of the lifetime (Istio's default). Measured from receipt when the CA backdated
        # notBefore for clock skew (ours by a minute), or a 10 s certificate would look half
        # spent on arrival and be fetched again at once.
        start = max(certificate.not_before, now)
        self._queue(entry, Priority.BACKGROUND, start + (certificate.not_after - start) / 2, now)
        return True

    def failed(self, identity: Identity, fetch_id: int, error: str, now: float) -> Retry | None:
        """Record a failed fetch and queue the retry; None if the fetch is no longer wanted."""
        entry = self._finish(identity, fetch_id)
        if entry is None:
            return None
        entry.failures += 1
        entry.last_error = error
        entry.last_failure_at = now
        retry_at = now + self.backoff.delay(entry.failures, self._rand())
        kept = self.certificate(identity, now)
        self._queue(entry, Priority.BACKGROUND if kept else Priority.WARMUP, retry_at, now)
        return Retry(identity, entry.failures, retry_at, kept)

    def status(self, now: float) -> list[IdentityStatus]:
        out = []
        for entry in sorted(self._entries.values(), key=lambda e: str(e.identity)):
            certificate = self.certificate(entry.identity, now)
            if certificate is not None:
                state = "Available"
            elif entry.last_error is not None:
                state = "Unavailable"
            else:
                state = "Initializing"
            out.append(
                IdentityStatus(
                    identity=entry.identity,
                    state=state,
                    certificate=certificate,
                    fetching=entry.fetch_id is not None,
                    priority=entry.priority if entry.queued else None,
                    next_fetch=entry.due if entry.queued else None,
                    failures=entry.failures,
                    last_error=entry.last_error,
                )
            )
        return out

    def _queue(self, entry: _Entry, priority: Priority, due: float, now: float) -> None:
        entry.queued = True
        entry.priority = priority
        entry.due = due
        entry.ticket = next(self._counter)
        if due <= now:
            heapq.heappush(self._ready, (-priority, due, entry.ticket, entry.identity))
        else:
            heapq.heappush(self._waiting, (due, entry.ticket, entry.identity))

    def _queued(self, identity: Identity, ticket: int) -> _Entry | None:
        entry = self._entries.get(identity)
        if entry is None or not entry.queued or entry.ticket != ticket:
            return None
        return entry

    def _serving(self, not_after: float, serial: int, identity: Identity) -> bool:
        entry = self._entries.get(identity)
        return (
            entry is not None
            and entry.certificate is not None
            and entry.certificate.serial == serial
            and entry.certificate.not_after == not_after
        )

    def _finish(self, identity: Identity, fetch_id: int) -> _Entry | None:
        entry = self._entries.get(identity)
        if entry is None or entry.fetch_id != fetch_id:
            return None
        entry.fetch_id = None
        self._in_flight -= 1
        return entry

    def _expire(self, now: float) -> list[VerifiedCertificate]:
        expired = []
        while self._expiries and self._expiries[0][0] <= now:
            not_after, serial, identity = heapq.heappop(self._expiries)
            if not self._serving(not_after, serial, identity):
                continue  # replaced or forgotten before it expired
            entry = self._entries[identity]
            assert entry.certificate is not None
            expired.append(entry.certificate)
            entry.certificate = None
            if entry.queued and entry.priority < Priority.WARMUP:
                # A rotation retry became the only way back to a certificate.
                self._queue(entry, Priority.WARMUP, entry.due, now)
        return expired
