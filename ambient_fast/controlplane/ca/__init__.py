"""The control plane's CA: istiod's `CreateCertificate` with node-scoped authorization.

`Authority` holds the root (persisted, or plug-in files) and signs; `NodeTokens` authenticates
node proxies by per-node bearer tokens; `NodeAuthorizer` decides who gets which identity from
a `NodeDirectory` (`MeshNodeDirectory` for the model); `CertificateService` is the grpclib
servicer that `XdsServer` serves on 15012.
"""

from ambient_fast.controlplane.ca.authority import Authority, AuthorityError, ValidityBounds
from ambient_fast.controlplane.ca.authorizer import (
    Authenticator,
    Caller,
    Grant,
    NodeAuthorizer,
    Refusal,
    Unauthenticated,
)
from ambient_fast.controlplane.ca.csr import MalformedCsr, SigningRequest, parse_csr
from ambient_fast.controlplane.ca.directory import (
    InMemoryNodeDirectory,
    MeshNodeDirectory,
    NodeDirectory,
)
from ambient_fast.controlplane.ca.service import CertificateService
from ambient_fast.controlplane.ca.tokens import NodeTokens, TokenStoreError, node_proxy_identity

__all__ = [
    "Authenticator",
    "Authority",
    "AuthorityError",
    "Caller",
    "CertificateService",
    "Grant",
    "InMemoryNodeDirectory",
    "MalformedCsr",
    "MeshNodeDirectory",
    "NodeAuthorizer",
    "NodeDirectory",
    "NodeTokens",
    "Refusal",
    "SigningRequest",
    "TokenStoreError",
    "Unauthenticated",
    "ValidityBounds",
    "node_proxy_identity",
    "parse_csr",
]
