"""Configurations of the anchor proxies: HAProxy in TCP mode and an stunnel mTLS pair.

Both mirror the rows of shared/reference/05-performance-anchors.md so ratios are comparable.
"""

from __future__ import annotations

from perf.certs import CertFiles

# TLS 1.3 suites Istio allows (reference/01: AES-GCM only, no ChaCha20); OpenSSL spelling.
_TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"


def haproxy_config(listen_port: int, target_port: int) -> str:
    # One process, one thread: the anchor row is "HAProxy 2.6, TCP mode, 1 process".
    return f"""\
global
    nbthread 1
    maxconn 1024

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend perf_in
    bind 127.0.0.1:{listen_port}
    default_backend perf_out

backend perf_out
    server target 127.0.0.1:{target_port}
"""


def _stunnel_common(service: str, certs: CertFiles) -> str:
    # TCP_NODELAY on both legs, as our proxies set it (reference/01 "Sockets").
    return f"""\
foreground = yes
pid =
debug = notice
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[{service}]
cert = {certs.cert}
key = {certs.key}
CAfile = {certs.roots}
verifyChain = yes
sslVersionMin = TLSv1.3
ciphersuites = {_TLS13_SUITES}
"""


def stunnel_client_config(
    listen_port: int, server_port: int, certs: CertFiles, server_host: str = "127.0.0.1"
) -> str:
    """Plaintext in on `listen_port`, TLS out to the stunnel server (presenting a client cert)."""
    return _stunnel_common("perf_client", certs) + (
        f"client = yes\naccept = 127.0.0.1:{listen_port}\nconnect = {server_host}:{server_port}\n"
    )


def stunnel_server_config(
    listen_port: int, target_port: int, certs: CertFiles, listen_host: str = "127.0.0.1"
) -> str:
    """TLS in on `listen_port` (client certificate required), plaintext out to the target."""
    return _stunnel_common("perf_server", certs) + (
        f"requireCert = yes\naccept = {listen_host}:{listen_port}\n"
        f"connect = 127.0.0.1:{target_port}\n"
    )
