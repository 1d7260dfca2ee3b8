"""Certificate signing requests as Istio's node proxy sends them to the CA."""

from __future__ import annotations

from dataclasses import dataclass

from ambient_fast import _native
from ambient_fast.identity.spiffe import Identity


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    key_pem: bytes
    csr_pem: str


def new_csr(identity: Identity | str) -> KeyAndCsr:
    """A fresh P-256 key and its CSR: empty subject, one critical URI SAN (ztunnel's form)."""
    key_pem, csr_pem = _native.workload_key_and_csr(str(identity))
    return KeyAndCsr(key_pem, csr_pem)
