"""Who may get which certificate: istiod's node authorization as a sans-IO decision.

`NodeAuthorizer.decide` takes the authenticated caller, the CSR and the requested
ImpersonatedIdentity and answers `Grant` or `Refusal` (a gRPC status and a message). Which
identities run on which node comes from a `NodeDirectory` (`directory.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.struct_pb2 import Struct
from grpclib.const import Status

from ambient_fast.controlplane.ca.csr import MalformedCsr, parse_csr
from ambient_fast.controlplane.ca.directory import NodeDirectory
from ambient_fast.identity.ca import SubjectPublicKey
from ambient_fast.identity.spiffe import Identity, InvalidIdentity

# The CSR metadata key a node proxy uses to ask for a workload's identity
# (istio pkg/security ImpersonatedIdentity; ztunnel src/identity/caclient.rs).
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
# Accounts allowed to impersonate: istiod's CA_TRUSTED_NODE_ACCOUNTS as Istio's ambient
# profile sets it (namespace/service account of the ztunnel DaemonSet).
DEFAULT_TRUSTED_NODE_ACCOUNTS: frozenset[tuple[str, str]] = frozenset({("istio-system", "ztunnel")})


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated node proxy: the node it runs on and its own identity."""

    node: str
    identity: Identity

    def __str__(self) -> str:
        return f"node {self.node} ({self.identity})"


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """Authentication failed; `reason` is safe to return to the client (no secrets)."""

    reason: str


class Authenticator(Protocol):
    """Turns the request's `authorization` metadata into a caller (node tokens; later JWTs)."""

    def authenticate(self, authorization: str | None) -> Caller | Unauthenticated: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """Sign `public_key` for `identity`."""

    caller: Caller
    identity: Identity
    public_key: SubjectPublicKey
    impersonated: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer with `status` and `message` (which names the identity and node involved)."""

    status: Status
    message: str


def impersonated_identity(metadata: Struct) -> str | Refusal:
    """The request's ImpersonatedIdentity ("" when absent, as istiod reads it)."""
    if IMPERSONATED_IDENTITY not in metadata.fields:
        return ""
    value = metadata.fields[IMPERSONATED_IDENTITY]
    if value.WhichOneof("kind") != "string_value":
        return Refusal(Status.INVALID_ARGUMENT, f"metadata {IMPERSONATED_IDENTITY} is not a string")
    return value.string_value


class NodeAuthorizer:
    """istiod's CreateCertificate checks (security/pkg/server/ca/server.go, node_auth.go).

    Without impersonation a caller may get only its own identity. With it, the caller must be
    a trusted node-proxy account and some pod with the requested identity must run on the
    caller's node. Unlike istiod, the CSR's URI SANs must equal the granted identity (istiod
    ignores them), and refusals are PERMISSION_DENIED with the reason rather than an opaque
    UNAUTHENTICATED: the caller is authenticated, it is only not allowed this identity.
    """

    def __init__(
        self,
        directory: NodeDirectory,
        trusted_node_accounts: Iterable[tuple[str, str]] = DEFAULT_TRUSTED_NODE_ACCOUNTS,
    ) -> None:
        self._directory = directory
        self._trusted = frozenset(trusted_node_accounts)

    def decide(
        self, caller: Caller | Unauthenticated, csr_pem: str, impersonated: str = ""
    ) -> Grant | Refusal:
        if isinstance(caller, Unauthenticated):
            return Refusal(Status.UNAUTHENTICATED, caller.reason)
        try:
            request = parse_csr(csr_pem)
        except MalformedCsr as e:
            return Refusal(Status.INVALID_ARGUMENT, str(e))
        if not impersonated:
            return self._own_identity(caller, request.public_key, request.uris)
        return self._impersonation(caller, impersonated, request.public_key, request.uris)

    def _own_identity(
        self, caller: Caller, key: SubjectPublicKey, uris: Sequence[str]
    ) -> Grant | Refusal:
        wanted = str(caller.identity)
        if tuple(uris) != (wanted,):
            return Refusal(
                Status.PERMISSION_DENIED,
                f"CSR asks for {_names(uris)}, but without {IMPERSONATED_IDENTITY} caller "
                f"{caller} may only get its own identity {wanted}",
            )
        return Grant(caller, caller.identity, key, impersonated=False)

    def _impersonation(
        self, caller: Caller, impersonated: str, key: SubjectPublicKey, uris: Sequence[str]
    ) -> Grant | Refusal:
        account = (caller.identity.namespace, caller.identity.service_account)
        if account not in self._trusted:
            return Refusal(
                Status.PERMISSION_DENIED,
                f"caller {caller} may not request {impersonated}: "
                f"{account[0]}/{account[1]} is not a trusted node proxy account",
            )
        try:
            identity = Identity.parse(impersonated)
        except InvalidIdentity as e:
            return Refusal(Status.INVALID_ARGUMENT, f"{IMPERSONATED_IDENTITY}: {e}")
        if identity not in self._directory.identities_on(caller.node):
            return Refusal(
                Status.PERMISSION_DENIED,
                f"caller {caller} may not request {identity}: "
                f"no pod with that identity runs on node {caller.node}",
            )
        if tuple(uris) != (str(identity),):
            return Refusal(
                Status.INVALID_ARGUMENT,
                f"CSR asks for {_names(uris)}, which differs from "
                f"{IMPERSONATED_IDENTITY} {identity}",
            )
        return Grant(caller, identity, key, impersonated=True)


def _names(uris: Sequence[str]) -> str:
    return ", ".join(uris) if uris else "no URI SAN"
