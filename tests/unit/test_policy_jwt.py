"""JWT validation for RequestAuthentication: every way a token can fail, and a valid one."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ambient_fast.policy.jwt import Issuer, JwtRejected, parse_jwks, validate

NOW = 1_800_000_000
ISS = "https://issuer.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "kid": "ec",
                "x": b64int(EC_KEY.public_key().public_numbers().x),
                "y": b64int(EC_KEY.public_key().public_numbers().y),
            },
            {
                "kty": "RSA",
                "kid": "rsa",
                "n": b64int(RSA_KEY.public_key().public_numbers().n),
                "e": b64int(RSA_KEY.public_key().public_numbers().e),
            },
        ]
    }
)
ISSUER = Issuer(ISS, ("bookinfo",), parse_jwks(JWKS))


def token(alg: str = "ES256", kid: str = "ec", **overrides: Any) -> str:
    claims = {"iss": ISS, "sub": "alice", "aud": "bookinfo", "exp": NOW + 600, **overrides}
    head = b64(json.dumps({"alg": alg, "kid": kid}).encode())
    body = b64(json.dumps({k: v for k, v in claims.items() if v is not None}).encode())
    signed = f"{head}.{body}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(EC_KEY.sign(signed, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = RSA_KEY.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


@pytest.mark.parametrize(("alg", "kid"), [("ES256", "ec"), ("RS256", "rsa")])
def test_a_valid_token_gives_the_request_principal(alg: str, kid: str) -> None:
    valid = validate(token(alg, kid), [ISSUER], NOW)
    assert valid.principal == f"{ISS}/alice"
    assert valid.claims["aud"] == "bookinfo"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (token(exp=NOW - 3600), "expired"),
        (token(nbf=NOW + 3600), "not yet valid"),
        (token(iss="https://evil.example"), "is not trusted"),
        (token(aud="other"), "audience"),
        (token()[:-4] + "AAAA", "does not verify"),
        (token("ES256", "rsa"), "does not verify"),
        ("a.b", "not a JWS"),
        ("e30.e30.", "is not trusted"),
    ],
)
def test_bad_tokens_are_rejected_with_the_reason(bad: str, reason: str) -> None:
    with pytest.raises(JwtRejected, match=reason):
        validate(bad, [ISSUER], NOW)


def test_alg_none_never_verifies() -> None:
    head = b64(json.dumps({"alg": "none"}).encode())
    body = b64(json.dumps({"iss": ISS, "sub": "x", "aud": "bookinfo"}).encode())
    with pytest.raises(JwtRejected, match="does not verify"):
        validate(f"{head}.{body}.", [ISSUER], NOW)


def test_a_bad_jwks_names_the_key() -> None:
    with pytest.raises(ValueError, match="jwks key 0 \\(k1\\): unsupported key type 'oct'"):
        parse_jwks('{"keys": [{"kty": "oct", "kid": "k1"}]}')
