"""JWT validation as RequestAuthentication specifies it (reference 03).

No token: the request passes without a request principal. A token that fails any check
(format, issuer, signature, time, audience) is rejected (401). A valid token yields the
request principal `<iss>/<sub>` and its claims for AuthorizationPolicy.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# Allowed clock skew when checking exp/nbf (Envoy's jwt_authn default is 60 s).
CLOCK_SKEW_SECONDS = 60

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JwtRejected(ValueError):
    """The token is present but not acceptable (-> 401)."""


@dataclass(frozen=True, slots=True)
class Issuer:
    """One jwtRule: who may issue tokens, for which audiences, with which keys."""

    issuer: str
    audiences: tuple[str, ...]
    keys: tuple[tuple[str | None, PublicKey], ...]  # (kid, key)


@dataclass(frozen=True, slots=True)
class ValidToken:
    principal: str  # "<iss>/<sub>"
    claims: Mapping[str, Any]


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as e:
        raise JwtRejected(f"bad base64url: {e}") from None


def _int(value: str) -> int:
    return int.from_bytes(_b64(value), "big")


def parse_jwks(text: str) -> tuple[tuple[str | None, PublicKey], ...]:
    """RSA and EC (P-256, P-384) keys of a JWKS document; raises ValueError naming the key."""
    document = json.loads(text)
    keys: list[tuple[str | None, PublicKey]] = []
    for index, jwk in enumerate(document.get("keys", [])):
        kid, kty = jwk.get("kid"), jwk.get("kty")
        try:
            if kty == "RSA":
                keys.append(
                    (kid, rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key())
                )
            elif kty == "EC" and jwk.get("crv") in _CURVES:
                numbers = ec.EllipticCurvePublicNumbers(
                    _int(jwk["x"]), _int(jwk["y"]), _CURVES[jwk["crv"]]
                )
                keys.append((kid, numbers.public_key()))
            else:
                raise ValueError(f"unsupported key type {kty!r}")
        except (KeyError, ValueError, JwtRejected) as e:
            raise ValueError(f"jwks key {index} ({kid or 'no kid'}): {e}") from None
    return tuple(keys)


def _verify(key: PublicKey, alg: str, signed: bytes, signature: bytes) -> bool:
    digest = _HASHES.get(alg[2:])
    if digest is None:
        return False
    try:
        if alg.startswith("RS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), digest())
        elif alg.startswith("PS") and isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(digest()), salt_length=padding.PSS.DIGEST_LENGTH)
            key.verify(signature, signed, pss, digest())
        elif alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(signature) // 2
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            key.verify(der, signed, ec.ECDSA(digest()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def validate(token: str, issuers: Iterable[Issuer], now: float | None = None) -> ValidToken:
    """Checks `token` against the rules; raises JwtRejected with the reason."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtRejected("not a JWS compact token")
    try:
        header, claims = json.loads(_b64(parts[0])), json.loads(_b64(parts[1]))
    except ValueError as e:
        raise JwtRejected(f"bad JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtRejected("header and payload must be JSON objects")
    issuer = next((i for i in issuers if i.issuer == claims.get("iss")), None)
    if issuer is None:
        raise JwtRejected(f"issuer {claims.get('iss')!r} is not trusted")
    alg, kid = str(header.get("alg", "")), header.get("kid")
    candidates = [k for k_id, k in issuer.keys if kid is None or k_id in (None, kid)]
    signed, signature = f"{parts[0]}.{parts[1]}".encode(), _b64(parts[2])
    if not any(_verify(key, alg, signed, signature) for key in candidates):
        raise JwtRejected(f"signature ({alg}, kid {kid!r}) does not verify")
    now = time.time() if now is None else now
    if isinstance(claims.get("exp"), int | float) and now > claims["exp"] + CLOCK_SKEW_SECONDS:
        raise JwtRejected("expired")
    if isinstance(claims.get("nbf"), int | float) and now < claims["nbf"] - CLOCK_SKEW_SECONDS:
        raise JwtRejected("not yet valid")
    if issuer.audiences:
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud or ())
        if not auds & set(issuer.audiences):
            raise JwtRejected(f"audience {aud!r} is not one of {list(issuer.audiences)}")
    return ValidToken(f"{claims['iss']}/{claims.get('sub', '')}", claims)
