"""Per-node bearer tokens: issued, written for the node proxy, stored hashed, revocable."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from ambient_fast.controlplane.ca import (
    Caller,
    NodeTokens,
    TokenStoreError,
    Unauthenticated,
    node_proxy_identity,
)
from ambient_fast.controlplane.ca.tokens import TOKEN_INDEX_FILE
from ambient_fast.identity import Identity

ZTUNNEL = node_proxy_identity()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_token_authenticates_as_its_node_and_node_proxy(tmp_path: Path) -> None:
    tokens = NodeTokens.open(tmp_path)
    token = tokens.issue("node-a", ZTUNNEL)
    assert tokens.authenticate(f"Bearer {token}") == Caller("node-a", ZTUNNEL)
    # RFC 6750's scheme is case-insensitive.
    assert tokens.authenticate(f"bearer {token}") == Caller("node-a", ZTUNNEL)
    assert str(ZTUNNEL) == "spiffe://cluster.local/ns/istio-system/sa/ztunnel"


def test_tokens_are_256_random_bits(tmp_path: Path) -> None:
    tokens = NodeTokens()
    issued = {tokens.issue(f"node-{i}", ZTUNNEL) for i in range(50)}
    assert len(issued) == 50
    for token in issued:
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_token_file_is_private_and_the_index_holds_only_hashes(tmp_path: Path) -> None:
    tokens = NodeTokens.open(tmp_path)
    token = tokens.issue("node-a", ZTUNNEL)
    path = tokens.token_path("node-a")
    assert path == tmp_path / "node-tokens" / "node-a.token"
    assert path.read_text().strip() == token
    assert mode(path) == 0o600
    index = tmp_path / TOKEN_INDEX_FILE
    assert mode(index) == 0o600
    text = index.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    # Moving the token file to its node does not matter to the CA.
    path.unlink()
    assert tokens.authenticate(f"Bearer {token}") == Caller("node-a", ZTUNNEL)


def test_tokens_survive_a_restart(tmp_path: Path) -> None:
    token = NodeTokens.open(tmp_path).issue("node-a", ZTUNNEL)
    restarted = NodeTokens.open(tmp_path)
    assert restarted.authenticate(f"Bearer {token}") == Caller("node-a", ZTUNNEL)
    assert restarted.nodes() == {"node-a": ZTUNNEL}


def test_reissue_and_revoke_invalidate_the_old_token(tmp_path: Path) -> None:
    tokens = NodeTokens.open(tmp_path)
    old = tokens.issue("node-a", ZTUNNEL)
    new = tokens.issue("node-a", ZTUNNEL)
    assert tokens.authenticate(f"Bearer {old}") == Unauthenticated("unknown or revoked node token")
    assert tokens.authenticate(f"Bearer {new}") == Caller("node-a", ZTUNNEL)
    assert tokens.revoke("node-a") and not tokens.revoke("node-a")
    assert isinstance(tokens.authenticate(f"Bearer {new}"), Unauthenticated)
    assert not tokens.token_path("node-a").exists()
    assert isinstance(NodeTokens.open(tmp_path).authenticate(f"Bearer {new}"), Unauthenticated)


def test_ensure_keeps_a_valid_token_and_replaces_a_lost_one(tmp_path: Path) -> None:
    tokens = NodeTokens.open(tmp_path)
    path = tokens.ensure("node-a", ZTUNNEL)
    first = path.read_text().strip()
    assert NodeTokens.open(tmp_path).ensure("node-a", ZTUNNEL).read_text().strip() == first
    path.unlink()
    second = tokens.ensure("node-a", ZTUNNEL).read_text().strip()
    assert second != first
    assert isinstance(tokens.authenticate(f"Bearer {first}"), Unauthenticated)
    # A different node proxy identity for the node means a new token too.
    other = Identity.of("kube-system", "node-agent")
    assert tokens.ensure("node-a", other).read_text().strip() != second
    assert tokens.authenticate(f"Bearer {tokens.token_path('node-a').read_text().strip()}") == (
        Caller("node-a", other)
    )


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing authorization metadata"),
        ("", "missing authorization metadata"),
        ("Bearer", "not 'Bearer <node token>'"),
        ("Bearer   ", "not 'Bearer <node token>'"),
        ("Basic dXNlcjpwYXNz", "not 'Bearer <node token>'"),
        ("Bearer guessed", "unknown or revoked node token"),
    ],
)
def test_refusals_say_why(authorization: str | None, reason: str) -> None:
    tokens = NodeTokens()
    tokens.issue("node-a", ZTUNNEL)
    result = tokens.authenticate(authorization)
    assert isinstance(result, Unauthenticated) and reason in result.reason


@pytest.mark.parametrize("node", ["", "../etc", "Node-A", "node_a", "a/b", "-a", "a" * 254])
def test_node_names_must_be_dns_subdomains(tmp_path: Path, node: str) -> None:
    with pytest.raises(TokenStoreError, match="DNS-1123"):
        NodeTokens.open(tmp_path).issue(node, ZTUNNEL)


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"[]",
        b'{"version": 2, "nodes": {}}',
        b'{"version": 1, "nodes": {"node-a": {"sha256": "xyz", "identity": "spiffe://td/ns/a/sa/b"}}}',
        b'{"version": 1, "nodes": {"node-a": {"sha256": "' + b"0" * 64 + b'", "identity": "x"}}}',
    ],
)
def test_corrupt_index_is_refused_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / TOKEN_INDEX_FILE).write_bytes(content)
    with pytest.raises(TokenStoreError, match=TOKEN_INDEX_FILE):
        NodeTokens.open(tmp_path)
