"""SPIFFE identities and the workload certificates the mesh CA issues (no sockets)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ambient_fast import _native
from ambient_fast.identity import Identity, InvalidIdentity
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.lifetimes import DEFAULT_WORKLOAD_TTL

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def test_parse_and_format_round_trip() -> None:
    identity = Identity.parse(SLEEP)
    assert identity == Identity("cluster.local", "default", "sleep")
    assert str(identity) == SLEEP
    assert Identity.parse(str(identity)) == identity


def test_parse_keeps_unusual_but_valid_segments() -> None:
    uri = "spiffe://td.example.com/ns/my-ns.v2/sa/svc_account-1"
    assert Identity.parse(uri) == Identity("td.example.com", "my-ns.v2", "svc_account-1")
    assert str(Identity.parse(uri)) == uri


def test_of_applies_istio_defaults() -> None:
    assert str(Identity.of("ns")) == "spiffe://cluster.local/ns/ns/sa/default"
    assert Identity.of("ns", "", "") == Identity.of("ns")
    assert str(Identity.of("ns", "sa", "td")) == "spiffe://td/ns/ns/sa/sa"


def test_identities_are_values() -> None:
    a, b = Identity.parse(SLEEP), Identity.of("default", "sleep")
    assert a == b
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.namespace = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("", id="empty"),
        pytest.param("cluster.local/ns/a/sa/b", id="no-scheme"),
        pytest.param("https://cluster.local/ns/a/sa/b", id="https"),
        pytest.param("SPIFFE://cluster.local/ns/a/sa/b", id="upper-case-scheme"),
        pytest.param("spiffe:/cluster.local/ns/a/sa/b", id="one-slash"),
        pytest.param("spiffe://cluster.local", id="trust-domain-only"),
        pytest.param("spiffe://cluster.local/ns/a", id="no-sa"),
        pytest.param("spiffe://cluster.local/ns/a/sa/b/", id="trailing-slash"),
        pytest.param("spiffe://cluster.local/ns/a/sa/b/c", id="six-parts"),
        pytest.param("spiffe://cluster.local/sa/b/ns/a", id="swapped"),
        pytest.param("spiffe://cluster.local/namespace/a/sa/b", id="namespace-word"),
        pytest.param("spiffe:///ns/a/sa/b", id="empty-trust-domain"),
        pytest.param("spiffe://cluster.local/ns//sa/b", id="empty-namespace"),
        pytest.param("spiffe://cluster.local/ns/a/sa/", id="empty-sa"),
    ],
)
def test_invalid_identities_name_the_input(uri: str) -> None:
    with pytest.raises(InvalidIdentity) as caught:
        Identity.parse(uri)
    assert repr(uri) in str(caught.value)


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create()


def test_issued_certificate_is_istio_shaped(ca: MeshCA) -> None:
    issued = ca.issue(Identity.parse(SLEEP))
    cert = x509.load_pem_x509_certificate(issued.chain_pem)
    # Empty subject; the identity lives only in one critical URI SAN.
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SLEEP]
    assert len(list(san.value)) == 1
    # EC P-256 key, and the key PEM is the certificate's private half.
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == public
    # A leaf signed by the mesh root, good for client and server auth, valid for 24 h.
    cert.verify_directly_issued_by(ca.cert)
    assert issued.roots_pem == ca.root_pem
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert DEFAULT_WORKLOAD_TTL - datetime.timedelta(minutes=1) < lifetime <= DEFAULT_WORKLOAD_TTL


def test_issued_certificates_have_fresh_keys(ca: MeshCA) -> None:
    a, b = ca.issue(SLEEP), ca.issue(SLEEP)
    assert a.key_pem != b.key_pem
    serial_a = x509.load_pem_x509_certificate(a.chain_pem).serial_number
    assert serial_a != x509.load_pem_x509_certificate(b.chain_pem).serial_number


def test_reloaded_ca_issues_certificates_its_root_verifies(ca: MeshCA) -> None:
    reloaded = MeshCA.load(ca.root_pem, ca.key_pem)
    cert = x509.load_pem_x509_certificate(reloaded.issue(SLEEP).chain_pem)
    cert.verify_directly_issued_by(ca.cert)


def test_root_is_a_p256_ca_named_after_the_trust_domain() -> None:
    root = MeshCA.create("example.org").cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "example.org" in root.subject.rfc4514_string()
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)


def test_native_identity_reads_the_spiffe_san(ca: MeshCA) -> None:
    issued = ca.issue("spiffe://example.org/ns/web/sa/frontend")
    identity = _native.TlsIdentity(issued.chain_pem, issued.key_pem, issued.roots_pem)
    assert identity.spiffe_id == "spiffe://example.org/ns/web/sa/frontend"
    assert identity.trust_domain == "example.org"


def test_native_identity_refuses_a_certificate_without_spiffe_id(ca: MeshCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.sign(key.public_key(), ["https://example.org/not-spiffe"])
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="spiffe"):
        _native.TlsIdentity(chain, key_pem, ca.root_pem)


def test_native_identity_refuses_missing_roots(ca: MeshCA) -> None:
    issued = ca.issue(SLEEP)
    with pytest.raises(ValueError, match="roots"):
        _native.TlsIdentity(issued.chain_pem, issued.key_pem, b"")
