"""Mesh certificates for the TLS scenarios, issued by ambient_fast's own MeshCA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ambient_fast.identity.ca import MeshCA

# Identities of the two tunnel ends (Istio SPIFFE form: trust domain, namespace, account).
CLIENT_IDENTITY = "spiffe://cluster.local/ns/perf/sa/client"
SERVER_IDENTITY = "spiffe://cluster.local/ns/perf/sa/server"


@dataclass(frozen=True, slots=True)
class CertFiles:
    identity: str
    cert: Path
    key: Path
    roots: Path


@dataclass(frozen=True, slots=True)
class TunnelCerts:
    client: CertFiles
    server: CertFiles


def write_tunnel_certs(directory: Path) -> TunnelCerts:
    """Creates a fresh root and a client and server workload certificate under `directory`."""
    ca = MeshCA.create()
    roots = directory / "roots.pem"
    directory.mkdir(parents=True, exist_ok=True)
    roots.write_bytes(ca.root_pem)

    def issue(identity: str, stem: str) -> CertFiles:
        cert, key = ca.issue(identity).write(directory, stem)
        return CertFiles(identity, cert, key, roots)

    return TunnelCerts(issue(CLIENT_IDENTITY, "client"), issue(SERVER_IDENTITY, "server"))
