"""A mesh certificate authority and the workload certificates it issues.

Used by the control plane's CA and by test fixtures; the node proxy signs and checks with the
native extension instead (`_native.LocalCa`, same profile), so it never loads `cryptography`.
Workload certificates follow Istio: EC P-256 keys, empty subject, one critical URI SAN.
The CA key is EC (our own roots) or RSA (plug-in CAs, as istiod accepts in its cacerts).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambient_fast.identity.lifetimes import DEFAULT_ROOT_TTL, DEFAULT_WORKLOAD_TTL
from ambient_fast.identity.spiffe import Identity

# Backdate notBefore a little so peers with slightly skewed clocks accept new certificates.
_CLOCK_SKEW = datetime.timedelta(minutes=1)

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SubjectPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _pem_key(key: CAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """PEM material for one identity: the leaf chain, its key and the roots to trust."""

    identity: str
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(self.chain_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


class MeshCA:
    """A root CA that signs SPIFFE workload certificates."""

    def __init__(self, key: CAPrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert
        self.root_pem = cert.public_bytes(serialization.Encoding.PEM)
        # Everything a leaf shares with every other leaf, built once: the control plane's CA
        # signs hundreds per second and rebuilding these was a third of the signing time.
        self._leaf_template = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
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
        )

    @classmethod
    def create(
        cls, trust_domain: str = "cluster.local", ttl: datetime.timedelta = DEFAULT_ROOT_TTL
    ) -> MeshCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> MeshCA:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("mesh CA key: only EC and RSA keys are supported")
        return cls(key, x509.load_pem_x509_certificate(cert_pem))

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self._key)

    def sign(
        self,
        public_key: SubjectPublicKey,
        san_uris: list[str],
        ttl: datetime.timedelta = DEFAULT_WORKLOAD_TTL,
        dns_names: Sequence[str] = (),
    ) -> bytes:
        """Signs a leaf certificate for `public_key` carrying `san_uris` (and `dns_names`, for
        servers clients reach by name, such as the control plane); returns its PEM."""
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            self._leaf_template.public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + ttl)
            # Empty subject, so the SAN must be critical (RFC 5280 4.2.1.6), as Istio issues it.
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(u) for u in san_uris]
                    + [x509.DNSName(d) for d in dns_names]
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, identity: Identity | str, ttl: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> WorkloadCertificate:
        """Creates a P-256 key and a certificate for `identity` (standalone mode, fixtures)."""
        key = ec.generate_private_key(ec.SECP256R1())
        chain = self.sign(key.public_key(), [str(identity)], ttl)
        return WorkloadCertificate(str(identity), chain, _pem_key(key), self.root_pem)
