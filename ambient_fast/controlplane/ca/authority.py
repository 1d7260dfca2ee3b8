"""The CA's signing material and the chains it issues (leaf first, roots last), as istiod.

Two sources: a self-signed root created on first start and kept in the state directory
(`root-cert.pem`, `root-key.pem` mode 0600, reloaded on restart), or a plug-in CA given as
files with the names of istiod's `cacerts` secret (`ca-cert.pem`, `ca-key.pem`,
`root-cert.pem`, optional `cert-chain.pem`). `ValidityBounds` turns a requested lifetime into
the one issued.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ambient_fast.identity.ca import CAPrivateKey, MeshCA, SubjectPublicKey
from ambient_fast.identity.lifetimes import DEFAULT_WORKLOAD_TTL
from ambient_fast.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity

log = logging.getLogger(__name__)

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
# istiod's plug-in CA files (the `cacerts` secret, mounted at /etc/cacerts).
CA_CERT_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_CHAIN_FILE = "cert-chain.pem"

# A request without a lifetime (0) gets Istio's default workload lifetime, 24 h, which is
# also the default cap (istiod's own cap, MAX_WORKLOAD_CERT_TTL, is 90 days).
DEFAULT_MAX_LIFETIME = datetime.timedelta(hours=24)
# Node proxies refresh at half the lifetime: 10 min means one request per identity every
# 5 min, which keeps short-lifetime requests from turning into a signing storm.
DEFAULT_MIN_LIFETIME = datetime.timedelta(minutes=10)
# A leaf never outlives its issuer; keep a second of margin for the clock moving on.
_EXPIRY_MARGIN = datetime.timedelta(seconds=1)


class AuthorityError(Exception):
    """Unusable CA material; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class ValidityBounds:
    """How long issued certificates live: 0 asks for `default`, others are clamped."""

    default: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    minimum: datetime.timedelta = DEFAULT_MIN_LIFETIME
    maximum: datetime.timedelta = DEFAULT_MAX_LIFETIME

    def __post_init__(self) -> None:
        if not datetime.timedelta(0) < self.minimum <= self.default <= self.maximum:
            raise ValueError(
                f"validity bounds: need 0 < minimum ({self.minimum}) <= default "
                f"({self.default}) <= maximum ({self.maximum})"
            )

    def lifetime(self, requested_seconds: int) -> datetime.timedelta:
        """The lifetime to issue for a request's `validity_duration`; ValueError if negative."""
        if requested_seconds < 0:
            raise ValueError(f"validity_duration {requested_seconds} s is negative")
        if requested_seconds == 0:
            return self.default
        # Compare as integers first: an int64 of seconds can overflow timedelta.
        seconds = min(requested_seconds, int(self.maximum.total_seconds()))
        return max(datetime.timedelta(seconds=seconds), self.minimum)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise AuthorityError(f"{path}: {e.strerror or e}") from e


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError as e:
        raise AuthorityError(f"{path}: not PEM certificates ({e})") from e
    return certs


def _load_key(path: Path) -> CAPrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as e:  # TypeError: encrypted without a password
        raise AuthorityError(f"{path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise AuthorityError(f"{path}: a CA key must be EC or RSA")
    return key


def _check_key_matches(key: CAPrivateKey, cert: x509.Certificate, key_path: Path) -> None:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise AuthorityError(f"{key_path}: the key does not belong to the CA certificate")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write_new_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Authority:
    """Signs leaves with `signer`; every chain continues with `intermediates`, then `roots`."""

    def __init__(
        self,
        signer: MeshCA,
        intermediates: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        source: str,
    ) -> None:
        self.signer = signer
        self.roots = tuple(roots)
        self.source = source
        # Built once: every response ends with the same PEM strings.
        self._tail = [_pem(c) for c in intermediates] + [_pem(r) for r in self.roots]
        self._signer_expiry = signer.cert.not_valid_after_utc

    @property
    def roots_pem(self) -> bytes:
        """The trust bundle: what node proxies (and the xDS server's clients) trust."""
        return "".join(_pem(r) for r in self.roots).encode()

    @classmethod
    def self_signed(cls, state_dir: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Authority:
        """The root kept in `state_dir`: created (EC P-256, 10 years) on first start."""
        cert_path, key_path = state_dir / ROOT_CERT_FILE, state_dir / ROOT_KEY_FILE
        if cert_path.exists() and key_path.exists():
            key, certs = _load_key(key_path), _load_certs(cert_path)
            if len(certs) != 1:
                raise AuthorityError(f"{cert_path}: expected one root, found {len(certs)}")
            _check_key_matches(key, certs[0], key_path)
            if key_path.stat().st_mode & 0o077:
                log.warning("ca: %s is readable by others; chmod 600 it", key_path)
            log.info("ca: reusing the root in %s", state_dir)
            return cls(MeshCA(key, certs[0]), (), certs, f"self-signed root in {state_dir}")
        if cert_path.exists() or key_path.exists():
            present, missing = (
                (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
            )
            raise AuthorityError(
                f"{present} exists but {missing} does not: refusing to replace a half-present "
                "root (restore the missing file, or remove both to create a new root)"
            )
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = MeshCA.create(trust_domain)
        _write_new_private(key_path, ca.key_pem)
        cert_path.write_bytes(ca.root_pem)
        log.info("ca: created a new root for %s in %s", trust_domain, state_dir)
        return cls(ca, (), (ca.cert,), f"self-signed root in {state_dir}")

    @classmethod
    def plug_in(cls, directory: Path) -> Authority:
        """A CA given as istiod's cacerts files; the chain is checked link by link."""
        ca_certs = _load_certs(directory / CA_CERT_FILE)
        ca_cert = ca_certs[0]
        key = _load_key(directory / CA_KEY_FILE)
        _check_key_matches(key, ca_cert, directory / CA_KEY_FILE)
        try:
            is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise AuthorityError(
                f"{directory / CA_CERT_FILE}: not a CA certificate (BasicConstraints)"
            )
        roots = _load_certs(directory / ROOT_CERT_FILE)
        chain_path = directory / CERT_CHAIN_FILE
        chain = _load_certs(chain_path) if chain_path.exists() else [ca_cert]
        if chain[0] != ca_cert:
            raise AuthorityError(f"{chain_path}: must start with the certificate of {CA_CERT_FILE}")
        # istiod's cert-chain.pem usually ends with the root too; roots go last, once.
        intermediates = [c for c in chain if c not in roots]
        for cert, issuer in pairwise(intermediates):
            if not _issued_by(cert, issuer):
                raise AuthorityError(
                    f"{chain_path}: {cert.subject} is not issued by {issuer.subject}"
                )
        if intermediates and not any(_issued_by(intermediates[-1], root) for root in roots):
            raise AuthorityError(
                f"{directory}: {intermediates[-1].subject} does not chain to {ROOT_CERT_FILE}"
            )
        if ca_cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
            raise AuthorityError(
                f"{directory / CA_CERT_FILE}: expired {ca_cert.not_valid_after_utc}"
            )
        log.info("ca: plug-in CA %s from %s", ca_cert.subject.rfc4514_string(), directory)
        return cls(MeshCA(key, ca_cert), intermediates, roots, f"plug-in CA in {directory}")

    def issue(
        self, public_key: SubjectPublicKey, identity: Identity, lifetime: datetime.timedelta
    ) -> list[str]:
        """Signs a leaf for `identity`; returns PEMs: leaf, intermediates, roots."""
        remaining = self._signer_expiry - datetime.datetime.now(datetime.UTC) - _EXPIRY_MARGIN
        if remaining <= datetime.timedelta(0):
            raise AuthorityError(f"the signing certificate expired at {self._signer_expiry}")
        leaf = self.signer.sign(public_key, [str(identity)], min(lifetime, remaining))
        return [leaf.decode(), *self._tail]
