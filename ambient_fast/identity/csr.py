"""Certificate signing requests as Istio's node proxy sends them to the CA."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ambient_fast.identity.spiffe import Identity


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    key_pem: bytes
    csr_pem: str


def new_csr(identity: Identity | str) -> KeyAndCsr:
    """A fresh P-256 key and its CSR: empty subject, one critical URI SAN (ztunnel's form)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyAndCsr(key_pem, csr.public_bytes(serialization.Encoding.PEM).decode())
