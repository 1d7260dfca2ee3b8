"""CreateCertificate without the transport: statuses, lifetimes, the response and the log."""

from __future__ import annotations

import datetime
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.struct_pb2 import Struct
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ambient_fast.controlplane.ca import (
    Authority,
    CertificateService,
    InMemoryNodeDirectory,
    NodeAuthorizer,
    NodeTokens,
    ValidityBounds,
    node_proxy_identity,
)
from ambient_fast.identity import Identity
from ambient_fast.identity.ca import MeshCA
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest

SLEEP = Identity.of("default", "sleep")
PEER = "10.0.0.1:40000"


def csr(uri: str) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
    )
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def request(identity: str = str(SLEEP), validity: int = 0) -> IstioCertificateRequest:
    fields = Struct()
    fields.update({"ImpersonatedIdentity": identity})
    return IstioCertificateRequest(csr=csr(identity), validity_duration=validity, metadata=fields)


@pytest.fixture
def tokens() -> NodeTokens:
    return NodeTokens()


@pytest.fixture
def service(tokens: NodeTokens) -> CertificateService:
    authority = Authority(ca := MeshCA.create(), (), (ca.cert,), "test")
    authorizer = NodeAuthorizer(InMemoryNodeDirectory([("node-a", SLEEP)]))
    return CertificateService(authority, tokens, authorizer)


@pytest.fixture
def bearer(tokens: NodeTokens) -> str:
    return f"Bearer {tokens.issue('node-a', node_proxy_identity())}"


def issued_lifetime(service: CertificateService, bearer: str, validity: int) -> datetime.timedelta:
    response = service.create_certificate(request(validity=validity), bearer, PEER)
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    return leaf.not_valid_after_utc - leaf.not_valid_before_utc - datetime.timedelta(minutes=1)


def test_response_is_one_pem_per_certificate_leaf_first(
    service: CertificateService, bearer: str
) -> None:
    response = service.create_certificate(request(), bearer, PEER)
    assert len(response.cert_chain) == 2
    assert all(pem.count("-----BEGIN CERTIFICATE-----") == 1 for pem in response.cert_chain)
    assert response.cert_chain[-1].encode() == service.authority.roots_pem
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        str(SLEEP)
    ]


@pytest.mark.parametrize(
    ("validity", "expected"),
    [
        (0, datetime.timedelta(hours=24)),
        (3600, datetime.timedelta(hours=1)),
        (30, datetime.timedelta(minutes=10)),
        (10 * 24 * 3600, datetime.timedelta(hours=24)),
    ],
)
def test_requested_validity_within_bounds(
    service: CertificateService, bearer: str, validity: int, expected: datetime.timedelta
) -> None:
    # Certificates carry whole seconds.
    assert abs(issued_lifetime(service, bearer, validity) - expected) < datetime.timedelta(
        seconds=1
    )


def test_configured_bounds(tokens: NodeTokens, bearer: str) -> None:
    authority = Authority(ca := MeshCA.create(), (), (ca.cert,), "test")
    authorizer = NodeAuthorizer(InMemoryNodeDirectory([("node-a", SLEEP)]))
    week = datetime.timedelta(days=7)
    service = CertificateService(authority, tokens, authorizer, ValidityBounds(maximum=week))
    lifetime = issued_lifetime(service, bearer, 3 * 24 * 3600)
    assert abs(lifetime - datetime.timedelta(days=3)) < datetime.timedelta(seconds=1)


def refusal(
    service: CertificateService, req: IstioCertificateRequest, auth: str | None
) -> GRPCError:
    with pytest.raises(GRPCError) as caught:
        service.create_certificate(req, auth, PEER)
    return caught.value


def test_negative_validity_is_invalid_argument(service: CertificateService, bearer: str) -> None:
    error = refusal(service, request(validity=-1), bearer)
    assert error.status == Status.INVALID_ARGUMENT and "negative" in str(error.message)


def test_impersonated_identity_must_be_a_string(service: CertificateService, bearer: str) -> None:
    req = request()
    req.metadata.update({"ImpersonatedIdentity": 7})
    assert refusal(service, req, bearer).status == Status.INVALID_ARGUMENT
    # Unauthenticated callers hear only that.
    assert refusal(service, req, "Bearer nope").status == Status.UNAUTHENTICATED


def test_refusal_is_logged_naming_the_caller(
    service: CertificateService, bearer: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = "spiffe://cluster.local/ns/default/sa/httpbin"
    with caplog.at_level(logging.WARNING, "ambient_fast.controlplane.ca"):
        error = refusal(service, request(other), bearer)
    assert error.status == Status.PERMISSION_DENIED
    (record,) = caplog.records
    line = record.getMessage()
    assert "PERMISSION_DENIED" in line and "node node-a" in line and PEER in line
    assert other in line


def test_a_refusal_does_not_affect_the_next_request(
    service: CertificateService, bearer: str
) -> None:
    refusal(service, IstioCertificateRequest(csr="garbage"), bearer)
    assert service.create_certificate(request(), bearer, PEER).cert_chain
