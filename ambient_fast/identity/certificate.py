"""A fetched workload certificate, checked before anything uses it.

`verify_issued` takes what a CA answered (PEM chain, leaf first) and the key we generated, and
returns a `VerifiedCertificate` only if the leaf names exactly the requested identity, certifies
our key, is valid now and chains to the configured roots; otherwise `CertificateRejected`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ambient_fast import _native
from ambient_fast.identity.spiffe import Identity

_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


class CertificateRejected(Exception):
    """A CA's answer that must not be used; the message names the identity and the reason."""


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TrustRoots:
    """The mesh roots fetched certificates must chain to (and that peers are verified with)."""

    def __init__(self, roots_pem: bytes) -> None:
        try:
            certificates = x509.load_pem_x509_certificates(roots_pem)
        except ValueError as e:
            raise ValueError(f"trust roots: not PEM certificates ({e})") from e
        self.certificates = tuple(certificates)
        self.pem = b"".join(_pem(c) for c in self.certificates)
        self._store = Store(list(self.certificates))

    def verifier(self, now: float) -> PolicyBuilder:
        return PolicyBuilder().store(self._store).time(_utc(now))


@dataclass(frozen=True, eq=False)
class VerifiedCertificate:
    """One identity's certificate: PEM for files and dumps, `tls_identity` for the data path.

    `chain_pem` is the leaf then any intermediates (what a TLS peer is sent); the roots are in
    `roots_pem`. Times are POSIX seconds.
    """

    identity: Identity
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes
    not_before: float
    not_after: float
    serial: int

    def valid_at(self, now: float) -> bool:
        return now < self.not_after

    @cached_property
    def tls_identity(self) -> _native.TlsIdentity:
        """The rustls identity for HBONE, built once per certificate (on first use)."""
        return _native.TlsIdentity(self.chain_pem, self.key_pem, self.roots_pem)

    def __repr__(self) -> str:  # never the key
        return (
            f"VerifiedCertificate({self.identity}, serial={self.serial:x}, "
            f"not_after={_utc(self.not_after).isoformat()})"
        )


def _uri_sans(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def verify_issued(
    identity: Identity, chain: Sequence[str], key_pem: bytes, roots: TrustRoots, now: float
) -> VerifiedCertificate:
    """Checks a CA's `cert_chain` (leaf first, roots last) for `identity` and our key."""
    if not chain:
        raise CertificateRejected(f"CA answered {identity} with an empty certificate chain")
    try:
        certs = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain]
    except ValueError as e:
        raise CertificateRejected(f"CA answered {identity} with a malformed chain: {e}") from e
    leaf = certs[0]
    uris = _uri_sans(leaf)
    # Exactly the identity asked for: a certificate with other or extra URI SANs would let this
    # node present identities nobody granted it (ztunnel compares the leaf's identity too).
    if uris != [str(identity)]:
        found = ", ".join(uris) or "no URI SAN"
        raise CertificateRejected(
            f"CA returned a certificate for {found} when asked for {identity}"
        )
    key = serialization.load_pem_private_key(key_pem, password=None)
    if leaf.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise CertificateRejected(f"CA returned a certificate for {identity} with another key")
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not_after.timestamp() <= now:
        raise CertificateRejected(
            f"CA returned a certificate for {identity} expired at {not_after}"
        )
    if not_before.timestamp() > now:
        raise CertificateRejected(
            f"CA returned a certificate for {identity} not valid before {not_before}"
        )
    # Roots travel separately (`roots_pem`); what remains is what a TLS peer needs from us.
    intermediates = [c for c in certs[1:] if c not in roots.certificates]
    try:
        roots.verifier(now).build_client_verifier().verify(leaf, intermediates)
    except VerificationError as e:
        raise CertificateRejected(
            f"certificate for {identity} does not chain to the configured roots: {e}"
        ) from e
    return VerifiedCertificate(
        identity=identity,
        chain_pem=b"".join(_pem(c) for c in [leaf, *intermediates]),
        key_pem=key_pem,
        roots_pem=roots.pem,
        not_before=not_before.timestamp(),
        not_after=not_after.timestamp(),
        serial=leaf.serial_number,
    )
