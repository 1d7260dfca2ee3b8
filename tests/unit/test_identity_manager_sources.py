"""Certificate sources without the network: the self-signed CA (standalone mode), the token
file the CA client authenticates with, and how a CA address is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from grpclib.const import Status

from ambient_fast.identity import Identity
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.ca_client import CaClient, TokenFile, parse_ca_address
from ambient_fast.identity.csr import new_csr
from ambient_fast.identity.files import write_demo_certificates
from ambient_fast.identity.issuer import CaRefused, SelfSignedCa
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.xds.client import DEFAULT_XDS_HOST

SLEEP = Identity.of("apps", "sleep")
HTTPBIN = Identity.of("apps", "httpbin")


async def test_standalone_node_proxy_gets_certificates_without_a_control_plane() -> None:
    ca = SelfSignedCa.create("cluster.local")
    async with CertificateManager(ca, ca.roots_pem) as manager:
        cert = await manager.certificate(SLEEP)
    assert cert.tls_identity.spiffe_id == str(SLEEP)
    leaf = x509.load_pem_x509_certificate(cert.chain_pem)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc >= ca.validity  # 24 h default


async def test_self_signed_ca_signs_only_what_the_csr_asks_for() -> None:
    ca = SelfSignedCa.create("cluster.local")
    with pytest.raises(CaRefused) as caught:
        await ca.create_certificate(SLEEP, new_csr(HTTPBIN).csr_pem)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert str(HTTPBIN) in str(caught.value) and str(SLEEP) in str(caught.value)
    with pytest.raises(CaRefused, match="malformed CSR"):
        await ca.create_certificate(SLEEP, "-----BEGIN CERTIFICATE REQUEST-----\nxx")


async def test_self_signed_ca_loads_the_root_written_by_certs(tmp_path: Path) -> None:
    assert write_demo_certificates(str(tmp_path), [], "cluster.local") == 0
    ca = SelfSignedCa.load(tmp_path / "root-cert.pem", tmp_path / "root-key.pem")
    chain = await ca.create_certificate(SLEEP, new_csr(SLEEP).csr_pem)
    assert chain[-1].encode() == (tmp_path / "root-cert.pem").read_bytes()


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "node-a.token"
    path.write_text("first\n")
    tokens = TokenFile(path)
    assert tokens.token() == "first"
    path.write_text("second-token\n")  # the control plane reissued it
    assert tokens.token() == "second-token"
    # Kubernetes swaps a symlink to rotate projected tokens.
    rotated = tmp_path / "rotated"
    rotated.write_text("third\n")
    link = tmp_path / "link"
    link.symlink_to(rotated)
    linked = TokenFile(link)
    assert linked.token() == "third"
    newer = tmp_path / "newer"
    newer.write_text("fourth\n")
    tmp_link = tmp_path / "link.tmp"
    tmp_link.symlink_to(newer)
    os.replace(tmp_link, link)
    assert linked.token() == "fourth"


def test_token_file_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.token"
    path.write_text("\n")
    with pytest.raises(ValueError, match=str(path)):
        TokenFile(path).token()
    with pytest.raises(FileNotFoundError):
        TokenFile(tmp_path / "missing").token()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("istiod.istio-system.svc:15012", ("istiod.istio-system.svc", 15012)),
        ("https://istiod.istio-system.svc:15012", ("istiod.istio-system.svc", 15012)),
        ("istiod.istio-system.svc", ("istiod.istio-system.svc", 15012)),
        ("10.96.0.10:15012", ("10.96.0.10", 15012)),
        ("[fd00::10]:15013", ("fd00::10", 15013)),
    ],
)
def test_ca_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_ca_address(address) == expected


@pytest.mark.parametrize("address", ["http://istiod:15012", "istiod:port", "", "istiod:1/x"])
def test_bad_ca_addresses_name_the_input(address: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_ca_address(address)
    assert repr(address) in str(caught.value)


def test_ca_client_verifies_istiod_by_name_when_dialled_by_address() -> None:
    roots = MeshCA.create().root_pem
    assert CaClient("10.96.0.10:15012", roots, None).server_name == DEFAULT_XDS_HOST
    assert CaClient("istiod.example:15012", roots, None).server_name == "istiod.example"
    named = CaClient("127.0.0.1:15012", roots, None, server_name="localhost")
    assert str(named) == "127.0.0.1:15012 (localhost)"
