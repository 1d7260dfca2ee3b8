"""The certificate manager with a fake clock and a fake CA (no sockets, no sleeps): fetches,
checks of what the CA returns, rotation, failures, forget and change notifications."""

from __future__ import annotations

import asyncio
import datetime
import heapq
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpclib.const import Status

from ambient_fast.identity import Identity
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.issuer import CaRefused, CaUnavailable
from ambient_fast.identity.manager import (
    CertificateManager,
    CertificateUnavailable,
    IdentityForgotten,
)
from ambient_fast.identity.schedule import Backoff, Priority

SLEEP = Identity.of("apps", "sleep")
HTTPBIN = Identity.of("apps", "httpbin")
LIFETIME = 100.0


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time moves only in `advance`, which runs due timers in order at their own time."""

    def __init__(self, start: float) -> None:
        self.time = start
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.time

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        target = self.time + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.time = max(self.time, when)
                timer.callback()
        self.time = target


@dataclass
class Call:
    identity: Identity
    csr: x509.CertificateSigningRequest
    answer: asyncio.Future[list[str]] = field(repr=False)


class FakeCa:
    """Records each CreateCertificate as it starts; the test decides each answer."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.mesh = MeshCA.create()
        self.calls: list[Call] = []

    def create_certificate(self, identity: Identity, csr_pem: str) -> asyncio.Future[list[str]]:
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.calls.append(Call(identity, x509.load_pem_x509_csr(csr_pem.encode()), future))
        return future

    def pending(self) -> list[Call]:
        return [c for c in self.calls if not c.answer.done()]

    def issue(
        self,
        call: Call,
        *,
        uri: str | None = None,
        lifetime: float = LIFETIME,
        valid_from: float = 0.0,
        by: MeshCA | None = None,
        public_key: ec.EllipticCurvePublicKey | None = None,
    ) -> None:
        """Answers `call` with a leaf valid from now (+ `valid_from`) for `lifetime` seconds."""
        ca = by or self.mesh
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        subject_key = public_key or call.csr.public_key()
        assert isinstance(subject_key, ec.EllipticCurvePublicKey)
        now = datetime.datetime.fromtimestamp(self.clock.now() + valid_from, datetime.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.cert.subject)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(seconds=lifetime))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(uri or str(call.identity))]
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
        call.answer.set_result([pem, ca.root_pem.decode()])

    def refuse(self, call: Call, status: Status = Status.PERMISSION_DENIED) -> None:
        call.answer.set_exception(CaRefused(call.identity, status, "not on your node", "fake"))


async def settle() -> None:
    """Lets the tasks that are ready run (the manager's fetch completions); no time passes."""
    for _ in range(10):
        await asyncio.sleep(0)


@dataclass
class Rig:
    clock: FakeClock
    ca: FakeCa
    manager: CertificateManager
    changes: list[tuple[Identity, VerifiedCertificate | None]]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    # Fake time starts at the real time (the root's validity is real), on a whole second as
    # certificate times are.
    clock = FakeClock(float(int(datetime.datetime.now(datetime.UTC).timestamp())))
    ca = FakeCa(clock)
    manager = CertificateManager(ca, ca.mesh.root_pem, clock=clock, backoff=Backoff(jitter=0.0))
    changes: list[tuple[Identity, VerifiedCertificate | None]] = []
    manager.subscribe(lambda identity, cert: changes.append((identity, cert)))
    async with manager:
        yield Rig(clock, ca, manager, changes)


async def test_a_connection_awaits_its_certificate(rig: Rig) -> None:
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    [call] = rig.ca.pending()
    assert call.identity == SLEEP and not waiting.done()
    rig.ca.issue(call)
    cert = await waiting
    assert cert.identity == SLEEP and rig.manager.current(SLEEP) is cert
    assert rig.changes == [(SLEEP, cert)]
    # What the data path uses: PEM and a ready rustls identity, built once per certificate.
    assert cert.tls_identity.spiffe_id == str(SLEEP)
    assert cert.tls_identity is cert.tls_identity
    assert cert.roots_pem == rig.ca.mesh.root_pem
    assert x509.load_pem_x509_certificates(cert.chain_pem)[0].serial_number == cert.serial
    assert b"PRIVATE KEY" not in repr(cert).encode()
    # A valid certificate is returned at once, with no second fetch.
    assert await rig.manager.certificate(SLEEP) is cert and len(rig.ca.calls) == 1


async def test_the_csr_asks_for_the_identity_with_a_fresh_p256_key(rig: Rig) -> None:
    rig.manager.request(SLEEP)
    [first] = rig.ca.pending()
    rig.ca.issue(first)
    await settle()
    rig.clock.advance(LIFETIME / 2)  # rotation
    [second] = rig.ca.pending()
    for call in (first, second):
        key = call.csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        san = call.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
            str(SLEEP)
        ]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert first.csr.public_key().public_bytes(*spki) != second.csr.public_key().public_bytes(*spki)


async def test_warmup_prefetch_runs_eight_at_a_time_and_real_time_goes_first(rig: Rig) -> None:
    workloads = [Identity.of("apps", f"sa{i}") for i in range(10)]
    for identity in workloads:
        rig.manager.request(identity, Priority.WARMUP)
    assert [c.identity for c in rig.ca.pending()] == workloads[:8]
    assert rig.manager.fetches_in_flight == 8
    # A connection for a queued identity upgrades it past the other queued one.
    waiting = asyncio.create_task(rig.manager.certificate(workloads[9]))
    await settle()
    assert len(rig.ca.calls) == 8
    rig.ca.issue(rig.ca.calls[0])
    await settle()
    assert rig.ca.calls[8].identity == workloads[9]
    rig.ca.issue(rig.ca.calls[8])
    assert (await waiting).identity == workloads[9]
    assert rig.manager.fetches_in_flight == 8  # workloads[8] took the freed slot
    assert rig.ca.calls[9].identity == workloads[8]


async def test_rotation_at_half_life_replaces_the_certificate(rig: Rig) -> None:
    rig.manager.request(SLEEP)
    rig.ca.issue(rig.ca.pending()[0])
    await settle()
    first = rig.manager.current(SLEEP)
    rig.clock.advance(LIFETIME / 2 - 0.01)
    assert rig.ca.pending() == []
    rig.clock.advance(0.01)
    [refresh] = rig.ca.pending()
    assert rig.manager.current(SLEEP) is first  # served while the refresh runs
    rig.ca.issue(refresh)
    await settle()
    second = rig.manager.current(SLEEP)
    assert second is not None and second is not first
    assert rig.changes == [(SLEEP, first), (SLEEP, second)]


async def test_ca_failure_keeps_the_old_certificate_until_expiry_then_recovers(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.manager.request(SLEEP)
    rig.ca.issue(rig.ca.pending()[0])
    await settle()
    old = rig.manager.current(SLEEP)
    assert old is not None
    attempts = []
    with caplog.at_level(logging.WARNING, "ambient_fast.identity"):
        # Refresh at 50 s, then retries 1, 2, 4, 8, 16 s after each failure; all refused.
        while rig.clock.now() < old.not_after:
            calls = rig.ca.pending()
            if calls:
                attempts.append(round(rig.clock.now() - (old.not_after - LIFETIME), 3))
                rig.ca.refuse(calls[0], Status.UNAVAILABLE)
                await settle()
                assert rig.manager.current(SLEEP) is old
            rig.clock.advance(min(1.0, old.not_after - rig.clock.now()))
        assert attempts == [50, 51, 53, 57, 65, 81]
        assert rig.manager.current(SLEEP) is None
        assert rig.changes[-1] == (SLEEP, None)  # the server stops presenting it
    assert any("keeping the current certificate" in r.getMessage() for r in caplog.records)
    assert any("expired" in r.getMessage() and str(SLEEP) in r.getMessage() for r in caplog.records)
    # Without a certificate, a waiting connection pulls the next retry (due at 113 s) forward
    # to now, and hears the reason if it fails...
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    [retry] = rig.ca.pending()
    rig.ca.refuse(retry, Status.UNAVAILABLE)
    with pytest.raises(CertificateUnavailable) as caught:
        await waiting
    assert "UNAVAILABLE" in str(caught.value) and str(SLEEP) in str(caught.value)
    # ...and the CA coming back brings the identity back (7th failure: 64 s later).
    rig.clock.advance(63.9)
    assert rig.ca.pending() == []
    rig.clock.advance(0.1)
    rig.ca.issue(rig.ca.pending()[0])
    await settle()
    fresh = rig.manager.current(SLEEP)
    assert fresh is not None and fresh in [cert for _, cert in rig.changes[-1:]]


async def test_a_certificate_for_the_wrong_identity_is_rejected_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    with caplog.at_level(logging.ERROR, "ambient_fast.identity"):
        rig.ca.issue(rig.ca.pending()[0], uri=str(HTTPBIN))
        with pytest.raises(CertificateUnavailable) as caught:
            await waiting
    assert str(HTTPBIN) in str(caught.value) and str(SLEEP) in str(caught.value)
    assert rig.manager.current(SLEEP) is None and rig.changes == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"certificate for {HTTPBIN} when asked for {SLEEP}" in m for m in errors)
    [status] = rig.manager.status()
    assert status.state == "Unavailable" and status.failures == 1  # retried with backoff
    rig.clock.advance(1)
    assert [c.identity for c in rig.ca.pending()] == [SLEEP]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param({"by": MeshCA.create()}, "does not chain to the configured roots", id="roots"),
        pytest.param({"valid_from": -200.0}, "expired at", id="expired"),
        pytest.param(
            {"public_key": ec.generate_private_key(ec.SECP256R1()).public_key()},
            "with another key",
            id="other-key",
        ),
    ],
)
async def test_an_unusable_certificate_is_never_served(
    rig: Rig, answer: dict[str, object], reason: str
) -> None:
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    rig.ca.issue(rig.ca.pending()[0], **answer)  # type: ignore[arg-type]
    with pytest.raises(CertificateUnavailable) as caught:
        await waiting
    assert reason in str(caught.value)
    assert rig.manager.current(SLEEP) is None and rig.changes == []


async def test_backoff_after_failures_follows_the_fake_clock(rig: Rig) -> None:
    rig.manager.request(HTTPBIN)
    delays = []
    for _ in range(10):
        rig.ca.refuse(rig.ca.pending()[0])
        await settle()
        started = rig.clock.now()
        while not rig.ca.pending():
            rig.clock.advance(0.5)
        delays.append(rig.clock.now() - started)
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 150, 150]


async def test_forget_cancels_the_fetch_and_wakes_waiters(rig: Rig) -> None:
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    [call] = rig.ca.pending()
    rig.manager.forget(SLEEP)
    with pytest.raises(IdentityForgotten):
        await waiting
    await settle()
    assert call.answer.cancelled()  # the CA request itself was cancelled
    assert rig.manager.fetches_in_flight == 0 and rig.manager.identities() == []


async def test_forget_drops_the_certificate_and_stops_rotation(rig: Rig) -> None:
    rig.manager.request(SLEEP)
    rig.ca.issue(rig.ca.pending()[0])
    await settle()
    cert = rig.manager.current(SLEEP)
    rig.manager.forget(SLEEP)
    assert rig.manager.current(SLEEP) is None
    assert rig.changes == [(SLEEP, cert), (SLEEP, None)]
    rig.clock.advance(10 * LIFETIME)
    assert rig.ca.pending() == [] and len(rig.ca.calls) == 1


async def test_a_failing_listener_does_not_stop_the_others(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(identity: Identity, cert: VerifiedCertificate | None) -> None:
        raise RuntimeError("listener bug")

    seen: list[Identity] = []
    rig.manager.subscribe(broken)
    unsubscribe = rig.manager.subscribe(lambda identity, cert: seen.append(identity))
    rig.manager.request(SLEEP)
    rig.ca.issue(rig.ca.pending()[0])
    with caplog.at_level(logging.ERROR, "ambient_fast.identity"):
        await settle()
    assert seen == [SLEEP] and rig.manager.current(SLEEP) is not None
    assert any("listener failed" in r.getMessage() for r in caplog.records)
    unsubscribe()
    rig.manager.forget(SLEEP)
    assert seen == [SLEEP]


async def test_an_unreachable_ca_is_a_clear_error(rig: Rig) -> None:
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    call = rig.ca.pending()[0]
    call.answer.set_exception(CaUnavailable(SLEEP, f"CA 10.0.0.1:15012 unreachable for {SLEEP}"))
    with pytest.raises(CertificateUnavailable, match="unreachable for spiffe://"):
        await waiting


async def test_close_cancels_everything(rig: Rig) -> None:
    waiting = asyncio.create_task(rig.manager.certificate(SLEEP))
    await settle()
    [call] = rig.ca.pending()
    await rig.manager.aclose()
    with pytest.raises(IdentityForgotten, match="closed"):
        await waiting
    assert call.answer.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        rig.manager.request(HTTPBIN)
