"""`python -m perf.ca_signing`: certificates per second from the control plane's CA.

Three numbers from one run, for P-256 CSRs as ztunnel sends them (a node proxy impersonating
workloads of its node):
- anchor: `MeshCA.sign` alone, cryptography building and signing a leaf (the ceiling);
- servicer: `CertificateService.create_certificate`: token lookup, CSR parse and signature
  check, node authorization, lifetime, signing, the response message; no transport;
- gRPC: CreateCertificate over TLS on loopback from real grpclib clients, with the server in
  its own process (so it has a core to itself), `--connections` x `--in-flight` requests.
The control-plane issue's goal is >= 500 certificates per second.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.struct_pb2 import Struct

from ambient_fast.controlplane.ca import (
    Authority,
    CertificateService,
    InMemoryNodeDirectory,
    NodeAuthorizer,
    NodeTokens,
    node_proxy_identity,
)
from ambient_fast.identity import Identity
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest

GOAL_CERTS_PER_S = 500.0
NODE = "perf-node"
IDENTITIES = 64  # workload identities on the node
CSRS = 256  # distinct keys, reused round-robin (key generation is the client's cost, not ours)
# ztunnel runs at most 8 CA fetches at once (reference 02).
DEFAULT_IN_FLIGHT = 8
DEFAULT_CONNECTIONS = 2
DEFAULT_SECONDS = 3.0


def identities() -> list[Identity]:
    return [Identity.of("perf", f"sa-{i}") for i in range(IDENTITIES)]


def requests() -> list[IstioCertificateRequest]:
    built = []
    for i in range(CSRS):
        identity = str(identities()[i % IDENTITIES])
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        metadata = Struct()
        metadata.update({"ImpersonatedIdentity": identity})
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        built.append(IstioCertificateRequest(csr=pem, validity_duration=3600, metadata=metadata))
    return built


def certificate_service(state: Path) -> CertificateService:
    """The CA as the control plane wires it, with every identity's pod on NODE."""
    authority = Authority.self_signed(state)
    tokens = NodeTokens.open(state)
    tokens.ensure(NODE, node_proxy_identity())
    directory = InMemoryNodeDirectory((NODE, identity) for identity in identities())
    return CertificateService(authority, tokens, NodeAuthorizer(directory))


@dataclass(frozen=True, slots=True)
class Rate:
    name: str
    certs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.certs / self.seconds


def _for(seconds: float, name: str, one: Callable[[int], object]) -> Rate:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(50):  # check the clock every 50 signatures
            one(count)
            count += 1
    return Rate(name, count, now - start)


def measure_anchor(service: CertificateService, seconds: float) -> Rate:
    signer, uri = service.authority.signer, [str(identities()[0])]
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(16)]
    return _for(seconds, "MeshCA.sign alone (anchor)", lambda i: signer.sign(keys[i % 16], uri))


def measure_servicer(service: CertificateService, state: Path, seconds: float) -> Rate:
    built = requests()
    bearer = f"Bearer {NodeTokens.open(state).token_path(NODE).read_text().strip()}"

    def one(i: int) -> None:
        service.create_certificate(built[i % CSRS], bearer, "127.0.0.1:1")

    return _for(seconds, "servicer (authn, CSR, authz, sign)", one)


async def _grpc_clients(
    port: int, state: Path, seconds: float, connections: int, in_flight: int
) -> Rate:
    # Late imports: the server child never needs the client side.
    import ssl

    from grpclib.client import Channel

    from ambient_fast.xds.proto.citadel_grpc import IstioCertificateServiceStub

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False  # the server presents a SPIFFE certificate
    tls.load_verify_locations(cafile=str(state / "root-cert.pem"))
    tls.set_alpn_protocols(["h2"])
    built = requests()
    headers = {
        "authorization": f"Bearer {(state / 'node-tokens' / f'{NODE}.token').read_text().strip()}"
    }
    channels = [Channel("127.0.0.1", port, ssl=tls) for _ in range(connections)]
    stubs = [IstioCertificateServiceStub(channel) for channel in channels]
    try:
        for stub in stubs:  # TLS handshakes and HTTP/2 setup happen before the clock starts
            await stub.CreateCertificate(built[0], metadata=headers)
        count = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(stub: IstioCertificateServiceStub, offset: int) -> None:
            nonlocal count
            i = offset
            while time.perf_counter() < deadline:
                await stub.CreateCertificate(built[i % CSRS], metadata=headers)
                count += 1
                i += in_flight * connections

        workers = [
            worker(stub, c * in_flight + k)
            for c, stub in enumerate(stubs)
            for k in range(in_flight)
        ]
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - start
    finally:
        for channel in channels:
            channel.close()
    return Rate(f"gRPC over TLS, {connections} conn x {in_flight} in flight", count, elapsed)


def measure_grpc(seconds: float, connections: int, in_flight: int, logs: Path) -> Rate:
    from perf.processes import running
    from perf.tools import free_port

    port = free_port()
    state = logs / "ca-state"
    argv = [sys.executable, "-m", "perf.ca_signing", "--serve", str(state), "--port", str(port)]
    with running("ca-server", argv, logs, port, cwd=Path(__file__).resolve().parent.parent):
        return uvloop.run(_grpc_clients(port, state, seconds, connections, in_flight))


async def _serve(state: Path, port: int) -> None:
    import ssl

    from ambient_fast.xds.resources import ResourceStore
    from ambient_fast.xds.server import XdsServer

    service = certificate_service(state)
    served = service.authority.signer.issue("spiffe://cluster.local/ns/istio-system/sa/istiod")
    cert, key = served.write(state / "serving", "istiod")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    async with XdsServer(ResourceStore(), ssl=tls, services=[service]) as server:
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()  # until the harness stops this process


def report(rates: list[Rate]) -> str:
    anchor = rates[0].per_second
    lines = ["CA signing throughput (P-256 CSRs; goal >= 500 certs/s)"]
    for rate in rates:
        goal, of_anchor = rate.per_second / GOAL_CERTS_PER_S, rate.per_second / anchor
        lines.append(
            f"  {rate.name:<40} {rate.per_second:7.0f} certs/s"
            f"  {goal:5.1f}x goal  {of_anchor:4.2f}x anchor"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.ca_signing", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per measurement")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT, help="per connection")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the server child
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        uvloop.run(_serve(args.serve, args.port))
        return 0
    with tempfile.TemporaryDirectory(prefix="ca-signing-") as tmp:
        work = Path(tmp)
        service = certificate_service(work / "in-process")
        rates = [
            measure_anchor(service, args.seconds),
            measure_servicer(service, work / "in-process", args.seconds),
            measure_grpc(args.seconds, args.connections, args.in_flight, work),
        ]
    print(report(rates))
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "goal_certs_per_s": GOAL_CERTS_PER_S,
                    "results": [
                        {
                            "name": r.name,
                            "certs": r.certs,
                            "seconds": r.seconds,
                            "certs_per_s": r.per_second,
                        }
                        for r in rates
                    ],
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    return 0 if all(r.per_second >= GOAL_CERTS_PER_S for r in rates[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
