"""Typed surface of the Rust extension (native/src/python.rs): rustls mTLS, HBONE, pumps, and
the node proxy's X.509 (native/src/python_pki.rs).

Asynchronous operations take a Reactor and a token and complete on the reactor's queue
(ambient_fast/hbone/completions.py turns them into futures); bytes never enter Python.
Socket fds passed in are owned by the extension afterwards (pass `sock.detach()`).
"""

__version__: str

class HboneError(Exception):
    """An HBONE connection or stream failed (connect, TLS, HTTP/2, reset)."""

    counts: tuple[int, int]
    """The bytes a failed pump moved before the failure, in the order its result gives them;
    (0, 0) for every other failure."""

class Http2Settings:
    """HTTP/2 and handshake tunables; the defaults are ztunnel's (reference 01)."""

    def __init__(
        self,
        *,
        stream_window: int = 4194304,
        connection_window: int = 16777216,
        max_frame_size: int = 1048576,
        max_concurrent_streams: int = 200,
        max_header_list_size: int = 16384,
        keepalive_interval: float = 10.0,
        keepalive_timeout: float = 20.0,
        handshake_timeout: float = 10.0,
    ) -> None: ...

class TlsIdentity:
    """A workload's certificate chain, key and mesh roots (PEM). Raises ValueError."""

    def __init__(self, chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> None: ...
    @property
    def spiffe_id(self) -> str: ...
    @property
    def trust_domain(self) -> str: ...

class ServerCertificates:
    """Which identity an HBONE server presents, by local (destination) IP; None = default."""

    def __init__(self) -> None: ...
    def set(self, ip: str | None, identity: TlsIdentity) -> None: ...
    def remove(self, ip: str | None) -> None: ...

class Reactor:
    """The completion queue of one event loop (see ambient_fast/hbone/completions.py)."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[tuple[int, object]]:
        """Finished operations as (token, result); failures carry an HboneError instance."""
    def cancel(self, token: int) -> None:
        """Aborts a running operation; it never completes."""
    def cut(self, token: int) -> None:
        """Ends a running pump early (socket and stream reset); it still completes with its
        counts. A no-op for other operations and finished tokens."""
    def running(self) -> int: ...

class ConnectRequest:
    """A CONNECT awaiting a decision: exactly one of `accept` or `reject`."""

    @property
    def authority(self) -> str: ...
    @property
    def peer_identity(self) -> str: ...
    @property
    def peer_addr(self) -> tuple[str, int]: ...
    @property
    def local_addr(self) -> tuple[str, int]: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...
    def reject(self, status: int) -> None: ...
    def accept(
        self, reactor: Reactor, token: int, fd: int, headers: list[tuple[str, str]] = ...
    ) -> None:
        """Answers 200 and pumps `fd`; completes with (to_upstream, to_peer) byte counts,
        also when cut (`Reactor.cut`); a failure's HboneError carries them as `counts`."""

class HboneServer:
    def __init__(
        self,
        listen_fd: int,
        certificates: ServerCertificates,
        settings: Http2Settings | None = None,
    ) -> None: ...
    def next_request(self, reactor: Reactor, token: int) -> None:
        """Completes with the next ConnectRequest; HboneError once the server has closed."""
    def drain(self) -> None: ...

class HboneStream:
    """An opened CONNECT stream (any status)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...
    def pump(self, reactor: Reactor, token: int, fd: int) -> None:
        """Pumps `fd`; completes with (socket->stream, stream->socket) byte counts, also when
        cut (`Reactor.cut`); a failure's HboneError carries them as `counts`."""
    def close(self) -> None: ...

class HbonePool:
    def __init__(
        self,
        settings: Http2Settings | None = None,
        *,
        max_streams_per_connection: int = 100,
        idle_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        mark: int | None = None,
        netns: int | None = None,
    ) -> None:
        """`mark`: SO_MARK on every pool socket (ztunnel 0x539: redirect rules skip it).
        `netns`: an open network namespace fd (duplicated) in which every pool socket is
        created, so a pod's tunnels leave from the pod (in-pod mode); ValueError if unusable.
        A route's source_ip is bound with IP_TRANSPARENT (an address not the proxy's own)."""
    def connect(
        self,
        reactor: Reactor,
        token: int,
        destination: str,
        identity: TlsIdentity,
        expected_identities: list[str],
        authority: str,
        headers: list[tuple[str, str]],
        source_ip: str | None = None,
    ) -> None:
        """Completes with an HboneStream (any status) or an HboneError."""
    def connection_count(self) -> int: ...
    def close(self) -> None: ...

def configure_runtime(worker_threads: int) -> None:
    """Native worker threads (default min(2, CPUs/2)); only before the runtime starts."""

def crypto_provider() -> str: ...
def drain_logs() -> list[tuple[int, str, str]]:
    """Native log records as (logging level, logger name, message)."""

# -- X.509 for the node proxy (native/src/pki.rs); every failure is a ValueError -------------

class Certificate:
    """One parsed X.509 certificate; equal when their DER is."""

    @property
    def der(self) -> bytes: ...
    @property
    def pem(self) -> str: ...
    @property
    def serial_bytes(self) -> bytes:
        """The serial number's big-endian magnitude."""
    @property
    def not_before(self) -> int:
        """POSIX seconds."""
    @property
    def not_after(self) -> int: ...
    @property
    def uri_sans(self) -> list[str]: ...
    @property
    def spki(self) -> bytes:
        """SubjectPublicKeyInfo, DER."""

def parse_certificates(pem: bytes) -> list[Certificate]:
    """Every CERTIFICATE block, in order; no block or another kind of block is an error."""

def private_key_spki(key_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a PKCS#8 PEM private key."""

def verify_client_chain(
    leaf: Certificate, intermediates: list[Certificate], roots: list[Certificate], now: float
) -> None:
    """Raises ValueError unless `leaf` chains to `roots` for client auth at `now`."""

def workload_key_and_csr(uri: str) -> tuple[bytes, str]:
    """A fresh P-256 key (PKCS#8 PEM) and its CSR (PEM): empty subject, one critical URI SAN."""

class LocalCa:
    """A root CA signing workload certificates locally (FAKE_CA), in the control plane CA's
    certificate profile."""

    @staticmethod
    def create(trust_domain: str, ttl_seconds: float) -> LocalCa:
        """A fresh self-signed P-256 root, O=`trust_domain`."""
    @staticmethod
    def load(cert_pem: bytes, key_pem: bytes) -> LocalCa:
        """An existing root and its key (EC or RSA, PKCS#8 or SEC1 PEM)."""
    @property
    def root_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...
    def sign_csr(self, csr_pem: str, identity: str, ttl_seconds: float) -> bytes:
        """The leaf PEM for a CSR whose self-signature holds and whose only URI SAN is
        `identity`."""
