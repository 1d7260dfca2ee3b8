"""SPIFFE identities in Istio's form: spiffe://<trust-domain>/ns/<namespace>/sa/<account>."""

from __future__ import annotations

from dataclasses import dataclass

# Istio defaults: empty trust domain -> cluster.local, empty service account -> default.
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
_SCHEME = "spiffe://"


class InvalidIdentity(ValueError):
    """A string that is not an Istio SPIFFE identity."""


@dataclass(frozen=True, slots=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def of(cls, namespace: str, service_account: str = "", trust_domain: str = "") -> Identity:
        return cls(
            trust_domain or DEFAULT_TRUST_DOMAIN,
            namespace,
            service_account or DEFAULT_SERVICE_ACCOUNT,
        )

    @classmethod
    def parse(cls, uri: str) -> Identity:
        if not uri.startswith(_SCHEME):
            raise InvalidIdentity(f"identity {uri!r}: must start with {_SCHEME}")
        parts = uri[len(_SCHEME) :].split("/")
        # Exactly five path parts: <td>/ns/<ns>/sa/<sa>, as istio/ztunnel's Identity parser.
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidIdentity(f"identity {uri!r}: expected spiffe://<td>/ns/<ns>/sa/<sa>")
        if not all(parts):
            raise InvalidIdentity(f"identity {uri!r}: empty path segment")
        return cls(parts[0], parts[2], parts[4])

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"
