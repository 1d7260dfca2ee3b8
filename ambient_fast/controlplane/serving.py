"""The control plane's own TLS and CA wiring: its serving certificate and the CA servicer."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ambient_fast.controlplane.ca import (
    Authority,
    CertificateService,
    MeshNodeDirectory,
    NodeAuthorizer,
    NodeTokens,
    ValidityBounds,
    node_proxy_identity,
)
from ambient_fast.controlplane.model import Mesh
from ambient_fast.identity import Identity

# istiod's identity and the names node proxies dial it by (CA_ADDRESS / XDS_ADDRESS).
ISTIOD_SERVICE_ACCOUNT = ("istio-system", "istiod")
ISTIOD_DNS_NAMES = (
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "localhost",
)
SERVING_TTL = datetime.timedelta(days=365)


def serving_context(authority: Authority, state_dir: Path, trust_domain: str) -> ssl.SSLContext:
    """TLS for :15012 with a fresh istiod certificate from the mesh CA (ALPN h2 for gRPC)."""
    key = ec.generate_private_key(ec.SECP256R1())
    identity = Identity.of(*ISTIOD_SERVICE_ACCOUNT, trust_domain=trust_domain)
    chain = authority.signer.sign(key.public_key(), [str(identity)], SERVING_TTL, ISTIOD_DNS_NAMES)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = state_dir / "istiod-cert.pem", state_dir / "istiod-key.pem"
    cert_path.write_bytes(chain + authority.roots_pem)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file already existed with other permissions
        os.write(fd, pem)
    finally:
        os.close(fd)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["h2"])
    return context


class CertificateAuthority:
    """The CA as the control plane runs it: node tokens per topology node, pods from the model."""

    def __init__(
        self,
        authority: Authority,
        state_dir: Path,
        trust_domain: str,
        validity: ValidityBounds | None = None,
    ) -> None:
        self.tokens = NodeTokens.open(state_dir)
        self.directory = MeshNodeDirectory(trust_domain)
        self.trust_domain = trust_domain
        self.service = CertificateService(
            authority, self.tokens, NodeAuthorizer(self.directory), validity
        )

    def follow(self, mesh: Mesh) -> None:
        """Called with every published Mesh: which pods run where, and a token per node."""
        self.directory.update(mesh)
        for node in mesh.topology.nodes:
            self.tokens.ensure(node.name, node_proxy_identity(self.trust_domain))
