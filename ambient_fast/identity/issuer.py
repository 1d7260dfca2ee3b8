"""Where workload certificates come from, as the `CertificateManager` sees it.

`CertificateIssuer` is a CSR in, a PEM chain out (leaf first) or a `CaError`. Two implement it:
`ca_client.CaClient` (istiod's CA over gRPC, loaded only when CA_ADDRESS is used) and
`SelfSignedCa` here, which signs locally with a `MeshCA` so a node proxy can run without a
control plane (FAKE_CA). Keeping the gRPC client out of this module keeps grpclib out of a
proxy that never calls a CA.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpclib.const import Status

from ambient_fast.identity.ca import DEFAULT_WORKLOAD_TTL, MeshCA
from ambient_fast.identity.spiffe import Identity


class CaError(Exception):
    """A certificate for `identity` could not be obtained; the message says from where and why."""

    def __init__(self, identity: Identity, message: str) -> None:
        super().__init__(message)
        self.identity = identity


class CaRefused(CaError):
    """The CA answered with a gRPC error status (PERMISSION_DENIED, UNAUTHENTICATED, ...)."""

    def __init__(self, identity: Identity, status: Status, detail: str, ca: str) -> None:
        super().__init__(identity, f"CA {ca} refused {identity}: {status.name}: {detail}")
        self.status = status
        self.detail = detail


class CaUnavailable(CaError):
    """The CA could not be reached or the call broke off (connection, TLS, timeout, token)."""


class CertificateIssuer(Protocol):
    """Signs a CSR for `identity`; answers the PEM chain, leaf first and roots last.

    Raises `CaError`. A plain method returning an awaitable (an `async def` qualifies), so a
    caller can start the request before it awaits it.
    """

    def create_certificate(self, identity: Identity, csr_pem: str) -> Awaitable[list[str]]: ...


class SelfSignedCa:
    """Signs workload certificates locally (standalone node proxy, no control plane).

    The CSR is checked as the control plane's CA checks it (self-signature, one URI SAN equal
    to the identity); the leaf lives `validity` and the chain is [leaf, root].
    """

    def __init__(self, ca: MeshCA, validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL) -> None:
        self.ca = ca
        self.validity = validity

    @property
    def roots_pem(self) -> bytes:
        return self.ca.root_pem

    @classmethod
    def load(
        cls, cert_path: Path, key_path: Path, validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> SelfSignedCa:
        """A root written by `ambient-fast certs` (root-cert.pem, root-key.pem)."""
        return cls(MeshCA.load(cert_path.read_bytes(), key_path.read_bytes()), validity)

    async def create_certificate(self, identity: Identity, csr_pem: str) -> list[str]:
        def refuse(reason: str) -> CaRefused:
            return CaRefused(identity, Status.INVALID_ARGUMENT, reason, "self-signed")

        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            key = csr.public_key()
            signed = csr.is_signature_valid
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound) as e:
            raise refuse(f"malformed CSR: {e}") from e
        if not signed:
            raise refuse("CSR signature does not match its key")
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise refuse(f"CSR key {type(key).__name__} is neither EC nor RSA")
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris != [str(identity)]:
            raise refuse(f"CSR asks for {', '.join(uris) or 'no URI SAN'}")
        leaf = self.ca.sign(key, [str(identity)], self.validity)
        return [leaf.decode(), self.ca.root_pem.decode()]
