"""The CA's root (persisted or plug-in), the chains it issues and the lifetime bounds."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ambient_fast.controlplane.ca import Authority, AuthorityError, ValidityBounds
from ambient_fast.identity import Identity
from ambient_fast.identity.ca import CAPrivateKey, MeshCA

SLEEP = Identity.of("default", "sleep")
HOUR = datetime.timedelta(hours=1)


def leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def verify(chain: list[str], roots: list[x509.Certificate]) -> x509.Certificate:
    """Checks a response chain as a TLS peer would; returns the leaf."""
    certs = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain]
    assert all(pem.count("BEGIN CERTIFICATE") == 1 for pem in chain)  # one PEM per entry
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verified = verifier.verify(certs[0], certs[1:])
    assert verified.subjects == [x509.UniformResourceIdentifier(str(SLEEP))]
    return certs[0]


def lifetime(cert: x509.Certificate) -> datetime.timedelta:
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - now


# --- self-signed, persisted root ------------------------------------------------------------


def test_root_is_created_once_and_reused_after_restart(tmp_path: Path) -> None:
    first = Authority.self_signed(tmp_path / "state")
    key_path = tmp_path / "state" / "root-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert (tmp_path / "state" / "root-cert.pem").read_bytes() == first.roots_pem
    issued_before = first.issue(leaf_key().public_key(), SLEEP, HOUR)

    restarted = Authority.self_signed(tmp_path / "state")
    assert restarted.roots_pem == first.roots_pem
    # A certificate from before the restart still verifies, and new ones chain to the same root.
    verify(issued_before, list(restarted.roots))
    verify(restarted.issue(leaf_key().public_key(), SLEEP, HOUR), list(first.roots))


def test_new_root_names_the_trust_domain(tmp_path: Path) -> None:
    authority = Authority.self_signed(tmp_path, trust_domain="example.org")
    (root,) = authority.roots
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "example.org"


@pytest.mark.parametrize("present", ["root-cert.pem", "root-key.pem"])
def test_half_present_root_is_refused(tmp_path: Path, present: str) -> None:
    Authority.self_signed(tmp_path)
    missing = "root-key.pem" if present == "root-cert.pem" else "root-cert.pem"
    (tmp_path / missing).unlink()
    with pytest.raises(AuthorityError, match=f"{present} exists but .*{missing} does not"):
        Authority.self_signed(tmp_path)


def test_root_key_of_another_root_is_refused(tmp_path: Path) -> None:
    Authority.self_signed(tmp_path)
    (tmp_path / "root-key.pem").write_bytes(MeshCA.create().key_pem)
    with pytest.raises(AuthorityError, match="does not belong"):
        Authority.self_signed(tmp_path)


def test_issued_chain_is_leaf_then_root(tmp_path: Path) -> None:
    authority = Authority.self_signed(tmp_path)
    key = leaf_key()
    chain = authority.issue(key.public_key(), SLEEP, 2 * HOUR)
    assert len(chain) == 2 and chain[1].encode() == authority.roots_pem
    leaf = verify(chain, list(authority.roots))
    assert leaf.public_key() == key.public_key()
    assert 2 * HOUR - datetime.timedelta(seconds=5) < lifetime(leaf) <= 2 * HOUR


def test_leaf_never_outlives_the_signing_certificate() -> None:
    authority = Authority(MeshCA.create(ttl=HOUR), (), (), "test")
    ca_expiry = authority.signer.cert.not_valid_after_utc
    chain = authority.issue(leaf_key().public_key(), SLEEP, datetime.timedelta(days=1))
    assert x509.load_pem_x509_certificate(chain[0].encode()).not_valid_after_utc <= ca_expiry


def test_expired_signing_certificate_refuses_to_sign() -> None:
    authority = Authority(MeshCA.create(ttl=-datetime.timedelta(seconds=30)), (), (), "test")
    with pytest.raises(AuthorityError, match="expired"):
        authority.issue(leaf_key().public_key(), SLEEP, HOUR)


# --- plug-in CA (istiod's cacerts files) ----------------------------------------------------


def intermediate(
    root: MeshCA,
    key: CAPrivateKey,
    *,
    is_ca: bool = True,
    ttl: datetime.timedelta = 365 * 24 * HOUR,
) -> x509.Certificate:
    root_key = serialization.load_pem_private_key(root.key_pem, password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, is_ca, is_ca, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_cacerts(
    directory: Path,
    root: MeshCA,
    key: CAPrivateKey,
    cert: x509.Certificate,
    chain: bytes | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-cert.pem").write_bytes(pem(cert))
    (directory / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "root-cert.pem").write_bytes(root.root_pem)
    # istiod's sample cacerts: cert-chain.pem = ca-cert.pem + root-cert.pem.
    (directory / "cert-chain.pem").write_bytes(chain if chain is not None else pem(cert, root.cert))
    return directory


@pytest.mark.parametrize(
    "ca_key",
    [
        pytest.param(ec.generate_private_key(ec.SECP256R1()), id="ec"),
        pytest.param(rsa.generate_private_key(65537, 2048), id="rsa"),
    ],
)
def test_plug_in_ca_chain_is_leaf_intermediate_root(tmp_path: Path, ca_key: CAPrivateKey) -> None:
    root = MeshCA.create()
    cert = intermediate(root, ca_key)
    authority = Authority.plug_in(write_cacerts(tmp_path, root, ca_key, cert))
    chain = authority.issue(leaf_key().public_key(), SLEEP, HOUR)
    assert chain[1:] == [pem(cert).decode(), root.root_pem.decode()]  # the root once, last
    verify(chain, [root.cert])
    assert authority.roots_pem == root.root_pem


def test_plug_in_ca_without_cert_chain_file(tmp_path: Path) -> None:
    root, key = MeshCA.create(), leaf_key()
    cert = intermediate(root, key)
    directory = write_cacerts(tmp_path, root, key, cert)
    (directory / "cert-chain.pem").unlink()
    verify(Authority.plug_in(directory).issue(leaf_key().public_key(), SLEEP, HOUR), [root.cert])


def test_plug_in_root_used_directly(tmp_path: Path) -> None:
    root = MeshCA.create()
    root_key = serialization.load_pem_private_key(root.key_pem, password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    directory = write_cacerts(tmp_path, root, root_key, root.cert, chain=root.root_pem)
    chain = Authority.plug_in(directory).issue(leaf_key().public_key(), SLEEP, HOUR)
    assert len(chain) == 2
    verify(chain, [root.cert])


def test_plug_in_ca_files_are_checked(tmp_path: Path) -> None:
    root, key = MeshCA.create(), leaf_key()
    cert = intermediate(root, key)

    wrong_key = write_cacerts(tmp_path / "wrong-key", root, leaf_key(), cert)
    with pytest.raises(AuthorityError, match=r"ca-key\.pem: the key does not belong"):
        Authority.plug_in(wrong_key)

    stranger = MeshCA.create()
    other_root = write_cacerts(tmp_path / "other-root", root, key, cert)
    (other_root / "root-cert.pem").write_bytes(stranger.root_pem)
    (other_root / "cert-chain.pem").write_bytes(pem(cert))
    with pytest.raises(AuthorityError, match=r"does not chain to root-cert\.pem"):
        Authority.plug_in(other_root)

    not_ca = write_cacerts(tmp_path / "not-ca", root, key, intermediate(root, key, is_ca=False))
    with pytest.raises(AuthorityError, match="not a CA certificate"):
        Authority.plug_in(not_ca)

    chain_of_other = write_cacerts(tmp_path / "chain", root, key, cert, chain=stranger.root_pem)
    with pytest.raises(AuthorityError, match="must start with"):
        Authority.plug_in(chain_of_other)

    expired = intermediate(root, key, ttl=-datetime.timedelta(seconds=30))
    with pytest.raises(AuthorityError, match="expired"):
        Authority.plug_in(write_cacerts(tmp_path / "expired", root, key, expired))

    missing = write_cacerts(tmp_path / "missing", root, key, cert)
    (missing / "ca-key.pem").unlink()
    with pytest.raises(AuthorityError, match=r"ca-key\.pem"):
        Authority.plug_in(missing)

    garbage = write_cacerts(tmp_path / "garbage", root, key, cert)
    (garbage / "root-cert.pem").write_bytes(b"not pem")
    with pytest.raises(AuthorityError, match=r"root-cert\.pem: not PEM certificates"):
        Authority.plug_in(garbage)


def test_leaf_of_plug_in_ca_is_capped_at_the_intermediate_expiry(tmp_path: Path) -> None:
    root, key = MeshCA.create(), leaf_key()
    cert = intermediate(root, key, ttl=HOUR)
    authority = Authority.plug_in(write_cacerts(tmp_path, root, key, cert))
    chain = authority.issue(leaf_key().public_key(), SLEEP, datetime.timedelta(hours=24))
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert leaf.not_valid_after_utc <= cert.not_valid_after_utc


# --- validity bounds ------------------------------------------------------------------------


def test_requested_lifetimes_are_honoured_within_bounds() -> None:
    bounds = ValidityBounds()
    assert bounds.lifetime(0) == datetime.timedelta(hours=24)  # Istio's default
    assert bounds.lifetime(3600) == HOUR
    assert bounds.lifetime(1) == datetime.timedelta(minutes=10)
    assert bounds.lifetime(7 * 24 * 3600) == datetime.timedelta(hours=24)
    assert bounds.lifetime(2**63 - 1) == datetime.timedelta(hours=24)  # int64 max, no overflow
    with pytest.raises(ValueError, match="validity_duration -5 s is negative"):
        bounds.lifetime(-5)


def test_bounds_are_configurable_and_checked() -> None:
    week = datetime.timedelta(days=7)
    bounds = ValidityBounds(default=HOUR, minimum=datetime.timedelta(minutes=1), maximum=week)
    assert bounds.lifetime(0) == HOUR
    assert bounds.lifetime(120) == datetime.timedelta(minutes=2)
    assert bounds.lifetime(30 * 24 * 3600) == week
    with pytest.raises(ValueError, match="minimum"):
        ValidityBounds(default=HOUR, maximum=HOUR / 2)
    with pytest.raises(ValueError, match="minimum"):
        ValidityBounds(minimum=datetime.timedelta(0))
