"""`istio.v1.auth.IstioCertificateService/CreateCertificate` over grpclib.

Served next to delta xDS on 15012: `XdsServer(store, ssl=..., services=[CertificateService(...)])`.
Each request is decided on its own: a refusal is a gRPC status for that call plus one log line
naming the caller; no other caller or stream notices.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ambient_fast.controlplane.ca.authority import Authority, AuthorityError, ValidityBounds
from ambient_fast.controlplane.ca.authorizer import (
    Authenticator,
    Caller,
    NodeAuthorizer,
    Refusal,
    Unauthenticated,
    impersonated_identity,
)
from ambient_fast.xds.proto.citadel_grpc import IstioCertificateServiceBase
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest, IstioCertificateResponse

if TYPE_CHECKING:
    from grpclib.server import Stream

    CsrStream = Stream[IstioCertificateRequest, IstioCertificateResponse]

log = logging.getLogger(__name__)


class CertificateService(IstioCertificateServiceBase):
    """Authenticate (`authenticator`), authorize (`authorizer`), clamp, sign (`authority`)."""

    def __init__(
        self,
        authority: Authority,
        authenticator: Authenticator,
        authorizer: NodeAuthorizer,
        validity: ValidityBounds | None = None,
    ) -> None:
        self.authority = authority
        self._authenticator = authenticator
        self._authorizer = authorizer
        self._validity = validity or ValidityBounds()

    def create_certificate(
        self, request: IstioCertificateRequest, authorization: str | None, peer: str
    ) -> IstioCertificateResponse:
        """One CreateCertificate call without the transport; raises GRPCError on refusal."""
        caller = self._authenticator.authenticate(authorization)
        # An unauthenticated caller learns nothing about its request beyond that.
        impersonated = impersonated_identity(request.metadata) if isinstance(caller, Caller) else ""
        if isinstance(impersonated, Refusal):
            raise self._refuse(impersonated, caller, peer)
        decision = self._authorizer.decide(caller, request.csr, impersonated)
        if isinstance(decision, Refusal):
            raise self._refuse(decision, caller, peer)
        try:
            lifetime = self._validity.lifetime(request.validity_duration)
        except ValueError as e:
            raise self._refuse(Refusal(Status.INVALID_ARGUMENT, str(e)), caller, peer) from e
        try:
            chain = self.authority.issue(decision.public_key, decision.identity, lifetime)
        except AuthorityError as e:
            log.error(
                "ca: cannot sign for %s (caller %s, peer %s): %s",
                decision.identity,
                caller,
                peer,
                e,
            )
            raise GRPCError(Status.INTERNAL, f"CA cannot sign: {e}") from e
        log.debug(
            "ca: issued %s for %s to %s (peer %s, impersonated=%s)",
            decision.identity,
            lifetime,
            decision.caller,
            peer,
            decision.impersonated,
        )
        return IstioCertificateResponse(cert_chain=chain)

    async def CreateCertificate(self, stream: CsrStream) -> None:
        request = await stream.recv_message()
        assert request is not None  # grpclib fails unary calls without a message before this
        addr = stream.peer.addr()
        peer = f"{addr[0]}:{addr[1]}" if addr else "unknown"
        # grpclib keeps metadata keys lower-case; `-bin` keys would be bytes, this one is text.
        authorization = stream.metadata.get("authorization") if stream.metadata else None
        response = self.create_certificate(
            request, authorization if isinstance(authorization, str) else None, peer
        )
        await stream.send_message(response)

    @staticmethod
    def _refuse(refusal: Refusal, caller: Caller | Unauthenticated, peer: str) -> GRPCError:
        who = str(caller) if isinstance(caller, Caller) else "unauthenticated"
        log.warning(
            "ca: refused %s: caller=%s peer=%s: %s", refusal.status.name, who, peer, refusal.message
        )
        return GRPCError(refusal.status, refusal.message)
