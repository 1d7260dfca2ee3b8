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

from ambient_fast import _native
from ambient_fast.identity.spiffe import Identity


class CertificateRejected(Exception):
    """A CA's answer that must not be used; the message names the identity and the reason."""


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _pem(certificates: Sequence[_native.Certificate]) -> bytes:
    return "".join(c.pem for c in certificates).encode()


class TrustRoots:
    """The mesh roots fetched certificates must chain to (and that peers are verified with)."""

    def __init__(self, roots_pem: bytes) -> None:
        try:
            certificates = _native.parse_certificates(roots_pem)
        except ValueError as e:
            raise ValueError(f"trust roots: not PEM certificates ({e})") from e
        self.certificates = tuple(certificates)
        self.pem = _pem(self.certificates)


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


def verify_issued(
    identity: Identity, chain: Sequence[str], key_pem: bytes, roots: TrustRoots, now: float
) -> VerifiedCertificate:
    """Checks a CA's `cert_chain` (leaf first, roots last) for `identity` and our key."""
    if not chain:
        raise CertificateRejected(f"CA answered {identity} with an empty certificate chain")
    try:
        certs = [c for pem in chain for c in _native.parse_certificates(pem.encode())]
    except ValueError as e:
        raise CertificateRejected(f"CA answered {identity} with a malformed chain: {e}") from e
    leaf = certs[0]
    uris = leaf.uri_sans
    # Exactly the identity asked for: a certificate with other or extra URI SANs would let this
    # node present identities nobody granted it (ztunnel compares the leaf's identity too).
    if uris != [str(identity)]:
        found = ", ".join(uris) or "no URI SAN"
        raise CertificateRejected(
            f"CA returned a certificate for {found} when asked for {identity}"
        )
    if leaf.spki != _native.private_key_spki(key_pem):
        raise CertificateRejected(f"CA returned a certificate for {identity} with another key")
    not_before, not_after = leaf.not_before, leaf.not_after
    if not_after <= now:
        raise CertificateRejected(
            f"CA returned a certificate for {identity} expired at {_utc(not_after)}"
        )
    if not_before > now:
        raise CertificateRejected(
            f"CA returned a certificate for {identity} not valid before {_utc(not_before)}"
        )
    # Roots travel separately (`roots_pem`); what remains is what a TLS peer needs from us.
    intermediates = [c for c in certs[1:] if c not in roots.certificates]
    try:
        _native.verify_client_chain(leaf, intermediates, list(roots.certificates), now)
    except ValueError as e:
        raise CertificateRejected(
            f"certificate for {identity} does not chain to the configured roots: {e}"
        ) from e
    return VerifiedCertificate(
        identity=identity,
        chain_pem=_pem([leaf, *intermediates]),
        key_pem=key_pem,
        roots_pem=roots.pem,
        not_before=not_before,
        not_after=not_after,
        serial=int.from_bytes(leaf.serial_bytes, "big"),
    )
