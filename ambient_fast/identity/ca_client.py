"""istiod's CA over gRPC: a `CertificateIssuer` (issuer.py) for the `CertificateManager`.

`CaClient` calls `istio.v1.auth.IstioCertificateService/CreateCertificate` as ztunnel does
(src/identity/caclient.rs): TLS trusting the mesh root, `authorization: Bearer <token>` from a
file, `ImpersonatedIdentity` metadata, the requested lifetime (SECRET_TTL).
"""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import H2Error

from ambient_fast.identity.issuer import CaRefused, CaUnavailable
from ambient_fast.identity.lifetimes import DEFAULT_WORKLOAD_TTL
from ambient_fast.identity.spiffe import Identity
from ambient_fast.xds.client import server_name_for
from ambient_fast.xds.proto.citadel_grpc import IstioCertificateServiceStub
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest

log = logging.getLogger(__name__)

# Istio's CA port (CA_ADDRESS default istiod.istio-system.svc:15012).
DEFAULT_CA_PORT = 15012
# The metadata key asking for a workload's identity (ztunnel src/identity/caclient.rs).
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
# One CreateCertificate call, connection and TLS included (our choice: ztunnel's 10 s connect
# timeout plus signing).
DEFAULT_CA_TIMEOUT = 15.0


class TokenFile:
    """A bearer token kept in a file, re-read whenever the file changes (rotated tokens).

    Kubernetes rotates projected service-account tokens by swapping a symlink, and the control
    plane rewrites node token files in place; both change what `stat` reports.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        """The current token; OSError or ValueError (naming the file) if unusable."""
        st = self.path.stat()
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            token = self.path.read_text().strip()
            if not token:
                raise ValueError(f"token file {self.path} is empty")
            self._token, self._seen = token, seen
        return self._token


def parse_ca_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `https://host:port` (CA_ADDRESS) -> (host, port)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if parts.scheme not in ("", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"CA address {address!r}: expected host:port or https://host:port")
    try:
        port = parts.port or DEFAULT_CA_PORT
    except ValueError as e:
        raise ValueError(f"CA address {address!r}: {e}") from e
    return parts.hostname, port


class CaClient:
    """istiod's CreateCertificate over one grpclib channel (reconnected on demand).

    The channel is TLS, trusting only `roots_pem`, and checks the server certificate for
    `server_name` (default: the address's host name, or istiod's service name when dialling an
    IP), so the CA can be dialled by address. With `impersonate` (ztunnel's shared mode) every
    request names the workload identity in `ImpersonatedIdentity`; without it (dedicated mode)
    the caller's token must stand for that identity itself.
    """

    def __init__(
        self,
        address: str,
        roots_pem: bytes,
        token: TokenFile | None,
        *,
        server_name: str | None = None,
        impersonate: bool = True,
        validity: datetime.timedelta = DEFAULT_WORKLOAD_TTL,
        timeout: float = DEFAULT_CA_TIMEOUT,
    ) -> None:
        self.host, self.port = parse_ca_address(address)
        self.server_name = server_name_for(self.host, server_name)
        self._tls = ssl.create_default_context(cadata=roots_pem.decode())
        self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._tls.set_alpn_protocols(["h2"])
        self._token = token
        self._impersonate = impersonate
        self._validity_seconds = int(validity.total_seconds())
        if self._validity_seconds <= 0:
            raise ValueError(f"certificate validity must be positive, not {validity}")
        self._timeout = timeout
        self._channel: Channel | None = None
        self._stub: IstioCertificateServiceStub | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.server_name})"

    def _connect(self) -> IstioCertificateServiceStub:
        if self._stub is None:
            # Created on first use: a grpclib channel binds to the running loop.
            self._channel = Channel(
                self.host,
                self.port,
                ssl=self._tls,
                config=Configuration(ssl_target_name_override=self.server_name),
            )
            self._stub = IstioCertificateServiceStub(self._channel)
        return self._stub

    async def create_certificate(self, identity: Identity, csr_pem: str) -> list[str]:
        request = IstioCertificateRequest(csr=csr_pem, validity_duration=self._validity_seconds)
        if self._impersonate:
            request.metadata.update({IMPERSONATED_IDENTITY: str(identity)})
        headers: dict[str, str] = {}
        if self._token is not None:
            try:
                headers["authorization"] = f"Bearer {self._token.token()}"
            except (OSError, ValueError) as e:
                raise CaUnavailable(
                    identity, f"cannot ask CA {self} for {identity}: token: {e}"
                ) from e
        try:
            response = await self._connect().CreateCertificate(
                request, timeout=self._timeout, metadata=headers
            )
        except GRPCError as e:
            raise CaRefused(identity, e.status, e.message or "(no message)", str(self)) from e
        except (OSError, TimeoutError, StreamTerminatedError, ProtocolError, H2Error) as e:
            reason = str(e) or type(e).__name__
            raise CaUnavailable(identity, f"CA {self} unreachable for {identity}: {reason}") from e
        if response is None or not response.cert_chain:
            raise CaUnavailable(identity, f"CA {self} answered {identity} with no certificate")
        log.debug(
            "identity: CA %s issued a chain of %d for %s", self, len(response.cert_chain), identity
        )
        return list(response.cert_chain)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
