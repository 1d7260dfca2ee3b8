"""Who may get which certificate: the CA's sans-IO decision (istiod's node authorization)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf.struct_pb2 import Struct
from grpclib.const import Status

from ambient_fast.controlplane.ca import (
    Caller,
    Grant,
    InMemoryNodeDirectory,
    NodeAuthorizer,
    NodeTokens,
    Refusal,
    node_proxy_identity,
)
from ambient_fast.controlplane.ca.authorizer import impersonated_identity
from ambient_fast.controlplane.ca.csr import MAX_CSR_BYTES
from ambient_fast.identity import Identity

ZTUNNEL = node_proxy_identity()
SLEEP = Identity.of("default", "sleep")
HTTPBIN = Identity.of("default", "httpbin")
NODE_A = Caller("node-a", ZTUNNEL)

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def csr(*uris: str, key: CsrKey | None = None, dns: tuple[str, ...] = ()) -> str:
    """A CSR as ztunnel sends it: empty subject, one critical URI SAN."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def authorizer() -> NodeAuthorizer:
    # sleep runs on node-a, httpbin on node-b.
    return NodeAuthorizer(InMemoryNodeDirectory([("node-a", SLEEP), ("node-b", HTTPBIN)]))


def refused(decision: Grant | Refusal, status: Status) -> str:
    assert isinstance(decision, Refusal), decision
    assert decision.status == status, decision
    return decision.message


def test_node_proxy_gets_the_identity_of_a_pod_on_its_node(authorizer: NodeAuthorizer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    decision = authorizer.decide(NODE_A, csr(str(SLEEP), key=key), str(SLEEP))
    assert isinstance(decision, Grant)
    assert (decision.caller, decision.identity, decision.impersonated) == (NODE_A, SLEEP, True)
    assert decision.public_key.public_numbers() == key.public_key().public_numbers()


def test_identity_of_a_pod_on_another_node_is_refused(authorizer: NodeAuthorizer) -> None:
    message = refused(
        authorizer.decide(NODE_A, csr(str(HTTPBIN)), str(HTTPBIN)), Status.PERMISSION_DENIED
    )
    assert str(HTTPBIN) in message and "node node-a" in message


def test_identity_is_refused_once_its_last_pod_left_the_node() -> None:
    directory = InMemoryNodeDirectory([("node-a", SLEEP), ("node-a", SLEEP)])
    authorizer = NodeAuthorizer(directory)
    directory.remove_pod("node-a", SLEEP)
    assert isinstance(authorizer.decide(NODE_A, csr(str(SLEEP)), str(SLEEP)), Grant)
    directory.remove_pod("node-a", SLEEP)
    refused(authorizer.decide(NODE_A, csr(str(SLEEP)), str(SLEEP)), Status.PERMISSION_DENIED)


def test_same_account_in_another_trust_domain_is_refused(authorizer: NodeAuthorizer) -> None:
    foreign = "spiffe://other.example/ns/default/sa/sleep"
    message = refused(authorizer.decide(NODE_A, csr(foreign), foreign), Status.PERMISSION_DENIED)
    assert foreign in message


@pytest.mark.parametrize("authorization", [None, "", "Bearer not-a-token", "Basic dXNlcg=="])
def test_unknown_caller_is_refused(authorizer: NodeAuthorizer, authorization: str | None) -> None:
    tokens = NodeTokens()
    tokens.issue("node-a", ZTUNNEL)
    caller = tokens.authenticate(authorization)
    message = refused(
        authorizer.decide(caller, csr(str(SLEEP)), str(SLEEP)), Status.UNAUTHENTICATED
    )
    assert "not-a-token" not in message  # never echo credentials


def test_unknown_caller_is_refused_before_its_csr_is_looked_at(
    authorizer: NodeAuthorizer,
) -> None:
    caller = NodeTokens().authenticate("Bearer x")
    refused(authorizer.decide(caller, "garbage", str(SLEEP)), Status.UNAUTHENTICATED)


def test_own_identity_without_impersonation(authorizer: NodeAuthorizer) -> None:
    decision = authorizer.decide(NODE_A, csr(str(ZTUNNEL)))
    assert isinstance(decision, Grant)
    assert decision.identity == ZTUNNEL and not decision.impersonated


def test_workload_identity_without_impersonation_is_refused(authorizer: NodeAuthorizer) -> None:
    # Even for a pod on the caller's own node: asking for it needs ImpersonatedIdentity.
    message = refused(authorizer.decide(NODE_A, csr(str(SLEEP))), Status.PERMISSION_DENIED)
    assert str(SLEEP) in message and "its own identity" in message and "node-a" in message


def test_csr_san_differing_from_impersonated_identity_is_refused(
    authorizer: NodeAuthorizer,
) -> None:
    message = refused(
        authorizer.decide(NODE_A, csr(str(HTTPBIN)), str(SLEEP)), Status.INVALID_ARGUMENT
    )
    assert str(HTTPBIN) in message and str(SLEEP) in message


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param((), id="no-san"),
        pytest.param((str(SLEEP), str(SLEEP)), id="twice"),
        pytest.param((str(SLEEP), str(HTTPBIN)), id="two-identities"),
    ],
)
def test_csr_must_ask_for_exactly_the_granted_identity(
    authorizer: NodeAuthorizer, uris: tuple[str, ...]
) -> None:
    refused(authorizer.decide(NODE_A, csr(*uris), str(SLEEP)), Status.INVALID_ARGUMENT)
    refused(authorizer.decide(NODE_A, csr(*uris)), Status.PERMISSION_DENIED)


def test_untrusted_account_may_not_impersonate(authorizer: NodeAuthorizer) -> None:
    workload_on_node_a = Caller("node-a", Identity.of("default", "curious"))
    message = refused(
        authorizer.decide(workload_on_node_a, csr(str(SLEEP)), str(SLEEP)),
        Status.PERMISSION_DENIED,
    )
    assert "default/curious is not a trusted node proxy account" in message


def test_trusted_node_accounts_are_configurable() -> None:
    directory = InMemoryNodeDirectory([("node-a", SLEEP)])
    authorizer = NodeAuthorizer(directory, trusted_node_accounts=[("kube-system", "node-agent")])
    agent = Caller("node-a", Identity.of("kube-system", "node-agent"))
    assert isinstance(authorizer.decide(agent, csr(str(SLEEP)), str(SLEEP)), Grant)
    refused(authorizer.decide(NODE_A, csr(str(SLEEP)), str(SLEEP)), Status.PERMISSION_DENIED)


@pytest.mark.parametrize(
    "impersonated",
    ["sleep", "spiffe://cluster.local/ns/default", "spiffe://cluster.local/ns/default/sa/"],
)
def test_malformed_impersonated_identity_is_invalid_argument(
    authorizer: NodeAuthorizer, impersonated: str
) -> None:
    message = refused(
        authorizer.decide(NODE_A, csr(str(SLEEP)), impersonated), Status.INVALID_ARGUMENT
    )
    assert "ImpersonatedIdentity" in message and repr(impersonated) in message


def _tampered(pem: str) -> str:
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        pytest.param("", "malformed CSR: empty", id="empty"),
        pytest.param("not a csr", "malformed CSR", id="garbage"),
        pytest.param(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "malformed CSR",
            id="bad-der",
        ),
        pytest.param("A" * (MAX_CSR_BYTES + 1), "at most", id="too-large"),
        pytest.param(_tampered(csr(str(SLEEP))), "signature does not match", id="tampered"),
        pytest.param(
            csr(str(SLEEP), key=ec.generate_private_key(ec.SECP384R1())), "EC secp384r1", id="p384"
        ),
        pytest.param(
            csr(str(SLEEP), key=rsa.generate_private_key(65537, 1024)), "RSA 1024", id="rsa1024"
        ),
        pytest.param(
            csr(str(SLEEP), key=ed25519.Ed25519PrivateKey.generate()), "Ed25519", id="ed25519"
        ),
        pytest.param(csr(str(SLEEP), dns=("sleep.default",)), "non-URI SANs", id="dns-san"),
    ],
)
def test_unusable_csr_is_invalid_argument(
    authorizer: NodeAuthorizer, pem: str, reason: str
) -> None:
    message = refused(authorizer.decide(NODE_A, pem, str(SLEEP)), Status.INVALID_ARGUMENT)
    assert reason in message


def test_rsa_2048_csr_is_accepted(authorizer: NodeAuthorizer) -> None:
    key = rsa.generate_private_key(65537, 2048)
    decision = authorizer.decide(NODE_A, csr(str(SLEEP), key=key), str(SLEEP))
    assert isinstance(decision, Grant) and isinstance(decision.public_key, rsa.RSAPublicKey)


def test_impersonated_identity_from_metadata() -> None:
    metadata = Struct()
    assert impersonated_identity(metadata) == ""
    metadata.update({"ImpersonatedIdentity": str(SLEEP), "other": 1})
    assert impersonated_identity(metadata) == str(SLEEP)
    metadata.update({"ImpersonatedIdentity": 42})
    refusal = impersonated_identity(metadata)
    assert isinstance(refusal, Refusal) and refusal.status == Status.INVALID_ARGUMENT
