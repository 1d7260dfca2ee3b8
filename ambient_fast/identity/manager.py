"""The node's workload certificates: fetched, checked, rotated and forgotten on the loop.

`CertificateManager` drives a `CertificateSchedule` (the sans-IO rules) with a `Clock` and a
`CertificateIssuer` (`CaClient` or `SelfSignedCa`): each fetch gets a fresh P-256 key and CSR,
every answer is checked by `verify_issued` before use, and listeners hear of every new
certificate and of every certificate that stops being served (expired, forgotten).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Protocol

from ambient_fast.identity.certificate import (
    CertificateRejected,
    TrustRoots,
    VerifiedCertificate,
    verify_issued,
)
from ambient_fast.identity.csr import new_csr
from ambient_fast.identity.issuer import CaError, CertificateIssuer
from ambient_fast.identity.schedule import (
    DEFAULT_MAX_IN_FLIGHT,
    Backoff,
    CertificateSchedule,
    IdentityStatus,
    Priority,
    StartFetch,
)
from ambient_fast.identity.spiffe import Identity

log = logging.getLogger(__name__)

# Called with (identity, certificate) for each new certificate, (identity, None) when an
# identity stops having one (expired without replacement, forgotten).
CertificateListener = Callable[[Identity, VerifiedCertificate | None], None]

# The longest a real-time timer sleeps before re-reading the wall clock (certificate times are
# wall-clock; this bounds how late a suspend or clock step is noticed).
_MAX_TIMER = 30.0


class CertificateUnavailable(Exception):
    """No valid certificate for `identity`: the fetch failed (the message says why)."""

    def __init__(self, identity: Identity, message: str) -> None:
        super().__init__(message)
        self.identity = identity


class IdentityForgotten(CertificateUnavailable):
    """The identity was forgotten (or the manager closed) while a caller waited for it."""


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall-clock time (certificates are dated in it) and timers on it."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class SystemClock:
    """`time.time()` and the running loop's timers."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        # Loop timers run on the monotonic clock; waking at least every _MAX_TIMER seconds
        # re-reads the wall clock (a wake-up with nothing due only re-arms the timer).
        delay = min(max(when - time.time(), 0.0), _MAX_TIMER)
        return asyncio.get_running_loop().call_later(delay, callback)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


class CertificateManager:
    """One certificate per workload identity used on this node.

    - `request(identity, priority)` starts managing an identity (Warmup: it appeared on the
      node) or raises the priority of its queued fetch; it never waits.
    - `await certificate(identity)` returns a valid certificate, fetching at RealTime priority
      and waiting if there is none; raises `CertificateUnavailable` if that fetch fails.
    - `current(identity)` is the valid certificate or None, without fetching.
    - `forget(identity)` when its last workload leaves the node.
    - `subscribe(listener)` for changes (the HBONE server's certificate map).
    """

    def __init__(
        self,
        issuer: CertificateIssuer,
        roots_pem: bytes,
        *,
        clock: Clock | None = None,
        max_concurrent_fetches: int = DEFAULT_MAX_IN_FLIGHT,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._issuer = issuer
        self.roots = TrustRoots(roots_pem)
        self._clock = clock or SystemClock()
        self._schedule = CertificateSchedule(max_concurrent_fetches, backoff, rand)
        self._fetches: dict[Identity, asyncio.Task[None]] = {}
        self._waiters: dict[Identity, list[asyncio.Future[VerifiedCertificate]]] = {}
        self._listeners: list[CertificateListener] = []
        self._timer: Cancellable | None = None
        self._timer_at: float | None = None
        self._closed = False

    async def __aenter__(self) -> CertificateManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- what callers use ------------------------------------------------------------------

    def request(self, identity: Identity, priority: Priority = Priority.WARMUP) -> None:
        self._check_open()
        self._schedule.request(identity, priority, self._clock.now())
        self._pump()

    async def certificate(
        self, identity: Identity, priority: Priority = Priority.REAL_TIME
    ) -> VerifiedCertificate:
        current = self.current(identity)
        if current is not None:
            return current
        self.request(identity, priority)
        waiter: asyncio.Future[VerifiedCertificate] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(identity, []).append(waiter)
        try:
            return await waiter
        finally:
            waiters = self._waiters.get(identity)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)

    def current(self, identity: Identity) -> VerifiedCertificate | None:
        return self._schedule.certificate(identity, self._clock.now())

    def forget(self, identity: Identity) -> None:
        forgotten = self._schedule.forget(identity)
        if forgotten is None:
            return
        task = self._fetches.pop(identity, None)
        if task is not None:
            task.cancel()
        self._fail_waiters(IdentityForgotten(identity, f"identity {identity} was forgotten"))
        log.info("identity: forgot %s", identity)
        if forgotten.certificate is not None:
            self._notify(identity, None)
        self._pump()

    def subscribe(self, listener: CertificateListener) -> Callable[[], None]:
        """Calls `listener` on every change; returns the function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def identities(self) -> list[Identity]:
        return [s.identity for s in self._schedule.status(self._clock.now())]

    def status(self) -> list[IdentityStatus]:
        return self._schedule.status(self._clock.now())

    @property
    def fetches_in_flight(self) -> int:
        return self._schedule.in_flight

    def close(self) -> None:
        """Cancels every fetch; waiters get `IdentityForgotten`."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._fetches.values():
            task.cancel()
        for identity in list(self._waiters):
            self._fail_waiters(IdentityForgotten(identity, "certificate manager closed"))

    async def aclose(self) -> None:
        tasks = list(self._fetches.values())
        self.close()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._fetches.clear()

    # -- the schedule's clock and I/O -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("certificate manager is closed")

    def _pump(self) -> None:
        """Starts due fetches, retires expired certificates, re-arms the timer."""
        if self._closed:
            return
        now = self._clock.now()
        polled = self._schedule.poll(now)
        # Fetches first: a listener told of an expiry below may forget an identity, which
        # must find its fetch to cancel.
        for start in polled.start:
            self._start(start)
        for expired in polled.expired:
            log.warning(
                "identity: certificate for %s expired at %s without a replacement (last error: %s)",
                expired.identity,
                _when(expired.not_after),
                self._schedule.last_error(expired.identity),
            )
            self._notify(expired.identity, None)
        wake = self._schedule.next_wakeup()
        if wake != self._timer_at or self._timer is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._clock.call_at(wake, self._on_timer) if wake is not None else None
            self._timer_at = wake

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._pump()

    def _start(self, start: StartFetch) -> None:
        key = new_csr(start.identity)  # a fresh P-256 key for every fetch
        try:
            pending = self._issuer.create_certificate(start.identity, key.csr_pem)
        except Exception as e:  # an issuer bug; still one failed fetch, not a broken manager
            log.exception("identity: issuer failed to start a fetch for %s", start.identity)
            pending = _raise(e)
        log.debug("identity: fetching %s (%s)", start.identity, start.priority.name)
        self._fetches[start.identity] = asyncio.ensure_future(
            self._complete(start, key.key_pem, pending)
        )

    async def _complete(
        self, start: StartFetch, key_pem: bytes, pending: Awaitable[list[str]]
    ) -> None:
        identity = start.identity
        certificate: VerifiedCertificate | None = None
        try:
            chain = await pending
            now = self._clock.now()
            certificate = verify_issued(identity, chain, key_pem, self.roots, now)
        except CaError as e:
            error = str(e)
        except CertificateRejected as e:
            # Never used, never served: a CA answering for the wrong identity is an incident.
            log.error("identity: rejected the CA's answer for %s: %s", identity, e)
            error = f"rejected the CA's answer: {e}"
        except Exception as e:  # cancellation is a BaseException and passes through
            log.exception("identity: fetching %s failed unexpectedly", identity)
            error = f"{type(e).__name__}: {e}"
        now = self._clock.now()
        if self._fetches.get(identity) is asyncio.current_task():
            del self._fetches[identity]
        if certificate is not None:
            self._installed(start, certificate, now)
        else:
            self._failed(start, error, now)
        self._pump()

    def _installed(self, start: StartFetch, certificate: VerifiedCertificate, now: float) -> None:
        if not self._schedule.succeeded(start.identity, start.fetch_id, certificate, now):
            return
        log.info(
            "identity: certificate for %s (serial %x) valid until %s",
            start.identity,
            certificate.serial,
            _when(certificate.not_after),
        )
        for waiter in self._waiters.pop(start.identity, []):
            if not waiter.done():
                waiter.set_result(certificate)
        self._notify(start.identity, certificate)

    def _failed(self, start: StartFetch, error: str, now: float) -> None:
        retry = self._schedule.failed(start.identity, start.fetch_id, error, now)
        if retry is None:
            return
        kept = (
            f"keeping the current certificate until {_when(retry.kept.not_after)}"
            if retry.kept is not None
            else "no certificate to keep"
        )
        log.warning(
            "identity: fetching %s failed (%d in a row); %s; retry in %.1f s: %s",
            start.identity,
            retry.failures,
            kept,
            retry.retry_at - now,
            error,
        )
        if retry.kept is None:
            self._fail_waiters(CertificateUnavailable(start.identity, error))

    def _fail_waiters(self, error: CertificateUnavailable) -> None:
        for waiter in self._waiters.pop(error.identity, []):
            if not waiter.done():
                waiter.set_exception(error)

    def _notify(self, identity: Identity, certificate: VerifiedCertificate | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(identity, certificate)
            except Exception:  # one broken listener must not stop the others or the manager
                log.exception("identity: certificate listener failed for %s", identity)


async def _raise(error: Exception) -> list[str]:
    raise error
