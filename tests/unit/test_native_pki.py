"""The node proxy's X.509 in the native extension: CSRs, the local CA (FAKE_CA) and checks of
what a CA returns. `cryptography` (the control plane's library) is the independent reader."""

from __future__ import annotations

import base64
import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ambient_fast import _native
from ambient_fast.identity import Identity
from ambient_fast.identity.ca import MeshCA

SLEEP = str(Identity.of("apps", "sleep"))
HTTPBIN = str(Identity.of("apps", "httpbin"))


def _profile(cert: x509.Certificate) -> dict[str, bool]:
    """Extension name -> critical."""
    return {ext.oid._name: ext.critical for ext in cert.extensions}


def test_the_csr_has_an_empty_subject_and_one_critical_uri_san() -> None:
    key_pem, csr_pem = _native.workload_key_and_csr(SLEEP)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SLEEP]
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_local_ca_leaves_have_the_control_plane_profile() -> None:
    mesh_ca = MeshCA.create()
    local = _native.LocalCa.load(mesh_ca.root_pem, mesh_ca.key_pem)
    _, csr_pem = _native.workload_key_and_csr(SLEEP)
    ours = x509.load_pem_x509_certificate(local.sign_csr(csr_pem, SLEEP, 600))
    theirs = x509.load_pem_x509_certificate(mesh_ca.issue(SLEEP).chain_pem)
    assert _profile(ours) == _profile(theirs)
    for ext in (x509.KeyUsage, x509.ExtendedKeyUsage, x509.BasicConstraints):
        assert ours.extensions.get_extension_for_class(ext).value == (
            theirs.extensions.get_extension_for_class(ext).value
        )
    aki = ours.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = mesh_ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ours.issuer == mesh_ca.cert.subject and ours.subject == x509.Name([])
    ours.verify_directly_issued_by(mesh_ca.cert)


def test_a_fresh_local_root_is_a_ca_for_its_trust_domain() -> None:
    root = x509.load_pem_x509_certificate(_native.LocalCa.create("td.example", 3600).root_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.subject.rfc4514_string() == "O=td.example"
    root.verify_directly_issued_by(root)


def _rsa_root() -> tuple[x509.Certificate, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plug-in")])
    now = datetime.datetime.now(datetime.UTC)
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return root, key_pem


def test_an_rsa_plug_in_root_signs_too() -> None:
    root, key_pem = _rsa_root()
    local = _native.LocalCa.load(root.public_bytes(serialization.Encoding.PEM), key_pem)
    _, csr_pem = _native.workload_key_and_csr(SLEEP)
    leaf = x509.load_pem_x509_certificate(local.sign_csr(csr_pem, SLEEP, 600))
    leaf.verify_directly_issued_by(root)


def test_a_root_and_a_key_that_do_not_match_are_refused() -> None:
    one, other = MeshCA.create(), MeshCA.create()
    with pytest.raises(ValueError, match="do not match"):
        _native.LocalCa.load(one.root_pem, other.key_pem)
    with pytest.raises(ValueError, match="CA key"):
        _native.LocalCa.load(one.root_pem, b"not a key")


def test_csrs_for_another_identity_tampered_or_garbage_are_refused() -> None:
    local = _native.LocalCa.create("cluster.local", 3600)
    _, for_httpbin = _native.workload_key_and_csr(HTTPBIN)
    with pytest.raises(ValueError, match=f"CSR asks for {HTTPBIN}"):
        local.sign_csr(for_httpbin, SLEEP, 600)
    _, csr_pem = _native.workload_key_and_csr(SLEEP)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1  # the signature's last byte
    tampered = "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n"
    tampered = tampered.format(base64.b64encode(bytes(der)).decode())
    with pytest.raises(ValueError, match="CSR signature does not match its key"):
        local.sign_csr(tampered, SLEEP, 600)
    with pytest.raises(ValueError, match="malformed CSR"):
        local.sign_csr("-----BEGIN CERTIFICATE REQUEST-----\nxx", SLEEP, 600)


def test_chains_are_checked_against_the_roots_and_the_clock() -> None:
    local, stranger = (_native.LocalCa.create("cluster.local", 3600) for _ in range(2))
    _, csr_pem = _native.workload_key_and_csr(SLEEP)
    [leaf] = _native.parse_certificates(local.sign_csr(csr_pem, SLEEP, 600))
    roots = _native.parse_certificates(local.root_pem)
    _native.verify_client_chain(leaf, [], roots, time.time())
    with pytest.raises(ValueError):
        strangers = _native.parse_certificates(stranger.root_pem)
        _native.verify_client_chain(leaf, [], strangers, time.time())
    with pytest.raises(ValueError):
        _native.verify_client_chain(leaf, [], roots, time.time() + 3600)
    assert leaf.uri_sans == [SLEEP] and leaf.not_after - leaf.not_before == 660


def test_parse_certificates_refuses_what_is_not_a_certificate() -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        _native.parse_certificates(b"")
    with pytest.raises(ValueError, match="PRIVATE KEY"):
        _native.parse_certificates(MeshCA.create().key_pem)
