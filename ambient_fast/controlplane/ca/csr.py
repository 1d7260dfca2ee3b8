"""Certificate signing requests as node proxies send them: parsed and checked, no I/O.

A CSR is only trusted for its key: the issued certificate carries the identity the caller is
authorized for, so the CSR's SANs are compared with that identity, never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ambient_fast.identity.ca import SubjectPublicKey

# A P-256 CSR is about 400 bytes and an RSA-4096 one under 2 KiB; anything near this bound is
# not a CSR, and parsing it would only cost the CA time.
MAX_CSR_BYTES = 16 * 1024
# Istio's workload keys are EC P-256 (reference 01); istio-agent can be switched to RSA 2048.
MIN_RSA_BITS = 2048


class MalformedCsr(ValueError):
    """The request's CSR cannot be used; the message says why (for INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class SigningRequest:
    """What the CA takes from a CSR: the key to certify and the URI SANs it asks for."""

    public_key: SubjectPublicKey
    uris: tuple[str, ...]


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    return type(key).__name__.removeprefix("_").removesuffix("PublicKey") or "unknown"


def _accepted_key(csr: x509.CertificateSigningRequest) -> SubjectPublicKey:
    try:
        key = csr.public_key()
    except ValueError as e:  # an algorithm cryptography cannot load
        raise MalformedCsr(f"malformed CSR: unsupported public key ({e})") from e
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    raise MalformedCsr(
        f"CSR key {_describe_key(key)} is not accepted "
        f"(EC P-256, or RSA of at least {MIN_RSA_BITS} bits)"
    )


def _requested_uris(csr: x509.CertificateSigningRequest) -> tuple[str, ...]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    except (ValueError, x509.DuplicateExtension) as e:
        raise MalformedCsr(f"malformed CSR: bad extensions ({e})") from e
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    others = [name for name in san if not isinstance(name, x509.UniformResourceIdentifier)]
    if others:
        kinds = ", ".join(sorted({type(name).__name__ for name in others}))
        raise MalformedCsr(f"CSR asks for non-URI SANs ({kinds}); the CA issues SPIFFE URIs only")
    return uris


def parse_csr(pem: str) -> SigningRequest:
    """Parses a PEM PKCS#10 request, checks its self-signature and key; raises MalformedCsr."""
    if not pem:
        raise MalformedCsr("malformed CSR: empty")
    if len(pem) > MAX_CSR_BYTES:
        raise MalformedCsr(f"malformed CSR: {len(pem)} bytes (at most {MAX_CSR_BYTES})")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise MalformedCsr(f"malformed CSR: {e}") from e
    key = _accepted_key(csr)
    try:
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as e:
        raise MalformedCsr(f"malformed CSR: signature cannot be checked ({e})") from e
    if not signed:
        raise MalformedCsr("malformed CSR: its signature does not match its public key")
    return SigningRequest(key, _requested_uris(csr))
