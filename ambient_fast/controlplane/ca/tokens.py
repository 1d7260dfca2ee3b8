"""Per-node bearer tokens: how the node proxies of a local mesh authenticate to the CA.

The control plane issues one random 256-bit token per node, bound to the node's name and its
node proxy's identity, and writes it to `<state>/node-tokens/<node>.token` (0600) for
`ambient-fast ztunnel` to read and send as `authorization: Bearer <token>`. The CA keeps only
SHA-256 hashes (`<state>/node-tokens.json`), so the token files can be moved to their nodes
and deleted without the CA losing anything, and nothing the CA stores can be replayed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from ambient_fast.controlplane.ca.authorizer import Caller, Unauthenticated
from ambient_fast.identity.spiffe import Identity

TOKEN_INDEX_FILE = "node-tokens.json"
TOKEN_DIRECTORY = "node-tokens"
TOKEN_BYTES = 32  # 256 bits from the OS CSPRNG
# The node proxy's own account in Istio's ambient install (the ztunnel DaemonSet).
NODE_PROXY_NAMESPACE = "istio-system"
NODE_PROXY_SERVICE_ACCOUNT = "ztunnel"
_INDEX_VERSION = 1
# Kubernetes node names are DNS-1123 subdomains; that also keeps them safe as file names.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_NODE_NAME = 253


class TokenStoreError(Exception):
    """The token index or a node name is unusable; the message names the file or node."""


def node_proxy_identity(trust_domain: str = "") -> Identity:
    """The identity a node token stands for by default: spiffe://<td>/ns/istio-system/sa/ztunnel."""
    return Identity.of(NODE_PROXY_NAMESPACE, NODE_PROXY_SERVICE_ACCOUNT, trust_domain)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _check_node(node: str) -> None:
    if len(node) > _MAX_NODE_NAME or not _NODE_NAME.fullmatch(node):
        raise TokenStoreError(f"node name {node!r} is not a DNS-1123 subdomain")


def _write_private(path: Path, data: bytes) -> None:
    """Writes `data` to `path` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: str
    identity: Identity


class NodeTokens:
    """The issued node tokens; `authenticate` is the CA's `Authenticator` for local meshes.

    With `state_dir=None` nothing is written (tests, benchmarks): `issue` still returns the
    token, but it is gone once the process ends.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self._state_dir = state_dir
        self._by_node: dict[str, _Entry] = {}
        self._by_digest: dict[str, Caller] = {}

    @classmethod
    def open(cls, state_dir: Path) -> NodeTokens:
        """The tokens issued before a restart (if any) stay valid."""
        tokens = cls(state_dir)
        index = state_dir / TOKEN_INDEX_FILE
        if not index.exists():
            return tokens
        try:
            data = orjson.loads(index.read_bytes())
            if data.get("version") != _INDEX_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {_INDEX_VERSION}")
            for node, entry in data["nodes"].items():
                _check_node(node)
                digest = entry["sha256"]
                if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                    raise ValueError(f"node {node}: sha256 is not 64 hex digits")
                tokens._remember(node, _Entry(digest, Identity.parse(entry["identity"])))
        # InvalidIdentity and orjson's JSONDecodeError are ValueErrors.
        except (OSError, ValueError, KeyError, TypeError, AttributeError, TokenStoreError) as e:
            raise TokenStoreError(f"{index}: unreadable node token index: {e}") from e
        return tokens

    def token_path(self, node: str) -> Path:
        if self._state_dir is None:
            raise TokenStoreError("node tokens kept in memory only: no token files")
        _check_node(node)
        return self._state_dir / TOKEN_DIRECTORY / f"{node}.token"

    def nodes(self) -> dict[str, Identity]:
        return {node: entry.identity for node, entry in self._by_node.items()}

    def issue(self, node: str, identity: Identity) -> str:
        """A fresh token for `node` (replacing any earlier one); written to its token file."""
        _check_node(node)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._forget(node)
        self._remember(node, _Entry(_digest(token), identity))
        if self._state_dir is not None:
            path = self.token_path(node)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(path, f"{token}\n".encode())
            self._save()
        return token

    def ensure(self, node: str, identity: Identity) -> Path:
        """Makes sure `node` has a valid token file for `identity`; issues one if not."""
        path = self.token_path(node)
        entry = self._by_node.get(node)
        if entry is not None and entry.identity == identity:
            try:
                if _digest(path.read_text().strip()) == entry.digest:
                    return path
            except OSError:
                pass  # moved away or deleted: a new token replaces the lost one
        self.issue(node, identity)
        return path

    def revoke(self, node: str) -> bool:
        """Invalidates `node`'s token and deletes its file; False if it had none."""
        if node not in self._by_node:
            return False
        self._forget(node)
        if self._state_dir is not None:
            self.token_path(node).unlink(missing_ok=True)
            self._save()
        return True

    def authenticate(self, authorization: str | None) -> Caller | Unauthenticated:
        if not authorization:
            return Unauthenticated(
                "missing authorization metadata: a node proxy sends "
                "'authorization: Bearer <node token>'"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Unauthenticated("authorization metadata is not 'Bearer <node token>'")
        caller = self._by_digest.get(_digest(token))
        if caller is None:
            return Unauthenticated("unknown or revoked node token")
        return caller

    def _remember(self, node: str, entry: _Entry) -> None:
        self._by_node[node] = entry
        self._by_digest[entry.digest] = Caller(node, entry.identity)

    def _forget(self, node: str) -> None:
        entry = self._by_node.pop(node, None)
        if entry is not None:
            del self._by_digest[entry.digest]

    def _save(self) -> None:
        assert self._state_dir is not None
        nodes = {
            node: {"sha256": entry.digest, "identity": str(entry.identity)}
            for node, entry in sorted(self._by_node.items())
        }
        data = orjson.dumps({"version": _INDEX_VERSION, "nodes": nodes}, option=orjson.OPT_INDENT_2)
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(self._state_dir / TOKEN_INDEX_FILE, data)
