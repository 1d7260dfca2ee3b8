"""Where workload certificates come from, as the `CertificateManager` sees it.

`CertificateIssuer` is a CSR in, a PEM chain out (leaf first) or a `CaError`. Two implement it:
`ca_client.CaClient` (istiod's CA over gRPC, loaded only when CA_ADDRESS is used) and
`SelfSignedCa` here, which signs locally with the native `LocalCa` (the control plane CA's
certificate profile) so a node proxy can run without a control plane (FAKE_CA). Keeping the gRPC
client out of this module keeps grpclib's channel out of a proxy that never calls a CA.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

from grpclib.const import Status

from ambient_fast import _native
from ambient_fast.identity.lifetimes import DEFAULT_ROOT_TTL, DEFAULT_WORKLOAD_TTL
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

    def __init__(
        self, ca: _native.LocalCa, validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> None:
        self.ca = ca
        self.validity = validity

    @property
    def roots_pem(self) -> bytes:
        return self.ca.root_pem

    @property
    def key_pem(self) -> bytes:
        return self.ca.key_pem

    @classmethod
    def create(
        cls, trust_domain: str, validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> SelfSignedCa:
        """A fresh P-256 root, O=`trust_domain`, that only this process knows."""
        root = _native.LocalCa.create(trust_domain, DEFAULT_ROOT_TTL.total_seconds())
        return cls(root, validity)

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes, validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> SelfSignedCa:
        """An existing root and its key (EC or RSA); ValueError names what is wrong."""
        return cls(_native.LocalCa.load(cert_pem, key_pem), validity)

    @classmethod
    def load(
        cls, cert_path: Path, key_path: Path, validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> SelfSignedCa:
        """A root written by `ambient-fast certs` (root-cert.pem, root-key.pem)."""
        try:
            return cls.from_pem(cert_path.read_bytes(), key_path.read_bytes(), validity)
        except ValueError as e:
            raise ValueError(f"{cert_path.parent}: {e}") from e

    async def create_certificate(self, identity: Identity, csr_pem: str) -> list[str]:
        try:
            leaf = self.ca.sign_csr(csr_pem, str(identity), self.validity.total_seconds())
        except ValueError as e:
            raise CaRefused(identity, Status.INVALID_ARGUMENT, str(e), "self-signed") from e
        return [leaf.decode(), self.ca.root_pem.decode()]
