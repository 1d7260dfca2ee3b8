"""`ambient-fast authz check` and `explain` on the bookinfo fixture (reference 03 paths)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ambient_fast.cli import main

BOOKINFO = str(Path(__file__).resolve().parents[1] / "fixtures" / "meshes" / "bookinfo")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "-f", BOOKINFO, "--json"])
    return code, orjson.loads(capsys.readouterr().out)


def test_service_traffic_goes_through_the_bound_waypoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "explain", "--from", "sleep/sleep", "--to", "productpage.bookinfo:9080")
    assert code == 0
    assert out == {
        "path": "waypoint",
        "waypoint": "bookinfo/waypoint",
        "endpoints": ["waypoint.bookinfo.svc.cluster.local:15008"],
        "expected_identities": ["spiffe://cluster.local/ns/bookinfo/sa/waypoint"],
    }


def test_pod_traffic_skips_a_service_waypoint_and_uses_hbone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["config", "-f", BOOKINFO])
    config = orjson.loads(capsys.readouterr().out)
    ratings = next(
        w["workload"]
        for name, w in config["resources"]["type.googleapis.com/istio.workload.Address"].items()
        if "/ratings-v1-" in name
    )
    ip = ratings["addresses"][0]
    _, out = run(capsys, "explain", "--from", "sleep/sleep", "--to", f"{ip}:9080")
    assert out["path"] == "hbone"
    assert out["endpoints"] == [f"{ip}:9080"]
    assert out["expected_identities"] == ["spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings"]


def test_unknown_destinations_pass_through(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "explain", "--from", "sleep/sleep", "--to", "192.0.2.1:443")
    assert out["path"] == "passthrough" and out["endpoints"] == ["192.0.2.1:443"]


def test_the_waypoint_enforces_l7_and_the_destination_ztunnel_sees_the_waypoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    to_reviews = ("authz", "check", "--from", "sleep/sleep", "--to", "reviews.bookinfo:9080")
    code, out = run(capsys, *to_reviews, "--http", "GET", "/reviews/1")
    assert (code, out["decision"], out["enforced_by"]) == (0, "ALLOW", ["waypoint", "ztunnel"])
    code, out = run(capsys, *to_reviews, "--http", "POST", "/reviews/1")
    assert (code, out["decision"], out["enforced_by"]) == (1, "DENY", ["waypoint"])
    # Normalized before matching: no way around the policy with dot segments.
    code, out = run(capsys, *to_reviews, "--http", "GET", "/x/../reviews/1")
    assert out["decision"] == "ALLOW"


def test_strict_mtls_denies_an_out_of_mesh_client(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        capsys,
        "authz",
        "check",
        "--from",
        "plaintext:192.0.2.7",
        "--to",
        "productpage.bookinfo:9080",
    )
    assert code == 1
    assert out == {
        "decision": "DENY",
        "enforced_by": ["ztunnel"],
        "policy": "bookinfo/istio_converted_peer_authentication_strict",
        "reason": out["reason"],
    }
    assert "DENY policy" in out["reason"]


def test_an_unknown_pod_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["authz", "check", "-f", BOOKINFO, "--from", "sleep/nope", "--to", "x:1"]) == 2
    assert "'sleep/nope': no such pod" in capsys.readouterr().err


def _jwt_mesh(tmp_path: Path) -> tuple[str, str]:
    """bookinfo plus a RequestAuthentication (inline JWKS) and a policy demanding a token,
    both on reviews; returns the mesh directory and a valid token."""
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    jwks = orjson.dumps(
        {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "kid": "k",
                    "x": b64(numbers.x.to_bytes(32, "big")),
                    "y": b64(numbers.y.to_bytes(32, "big")),
                }
            ]
        }
    ).decode()
    mesh = tmp_path / "mesh"
    shutil.copytree(BOOKINFO, mesh)
    (mesh / "jwt.yaml").write_text(
        f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  jwtRules: [{{issuer: "https://idp.example", jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-need-token, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: DENY
  rules: [{{from: [{{source: {{notRequestPrincipals: ["*"]}}}}]}}]
"""
    )
    head = b64(orjson.dumps({"alg": "ES256", "kid": "k"}))
    body = b64(orjson.dumps({"iss": "https://idp.example", "sub": "alice", "exp": 4102444800}))
    r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    signature = b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return str(mesh), f"{head}.{body}.{signature}"


def test_jwt_at_the_waypoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh, token = _jwt_mesh(tmp_path)
    base = [
        "authz",
        "check",
        "-f",
        mesh,
        "--json",
        "--from",
        "sleep/sleep",
        "--to",
        "reviews.bookinfo:9080",
        "--http",
        "GET",
        "/reviews/1",
    ]
    assert main([*base, "--jwt", token]) == 0
    assert orjson.loads(capsys.readouterr().out)["decision"] == "ALLOW"
    assert main(base) == 1  # no token: no request principal, and the DENY demands one
    assert orjson.loads(capsys.readouterr().out)["policy"] == "bookinfo/reviews-need-token"
    assert main([*base, "--jwt", token[:-6] + "AAAAAA"]) == 1
    assert "JWT rejected (401)" in orjson.loads(capsys.readouterr().out)["reason"]


WAYPOINT_INSTANCES_AND_DETAILS_POLICY = """
# The waypoint's Deployment, as istiod's deployment controller makes it.
apiVersion: apps/v1
kind: Deployment
metadata: {name: waypoint, namespace: bookinfo}
spec:
  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}
  template:
    metadata: {labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
    spec: {serviceAccountName: waypoint}
---
# ALLOW-only at details' ztunnel: sleep, not the waypoint that relays sleep's requests.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-from-sleep, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{from: [{source: {principals: [cluster.local/ns/sleep/sa/sleep]}}]}]
"""


def test_auto_allow_waypoint_policy_lets_the_waypoint_through_allow_only_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = tmp_path / "bookinfo"
    shutil.copytree(BOOKINFO, mesh)
    (mesh / "waypoint-allow.yaml").write_text(WAYPOINT_INSTANCES_AND_DETAILS_POLICY)
    check = ["authz", "check", "-f", str(mesh), "--json", "--from", "sleep/sleep"]
    to_details = [*check, "--to", "details.bookinfo:9080"]

    assert main(to_details) == 1  # off, as in istiod: the waypoint's identity is not allowed
    denied = orjson.loads(capsys.readouterr().out)
    assert (denied["decision"], denied["enforced_by"]) == ("DENY", ["waypoint", "ztunnel"])
    assert "ztunnel of bookinfo/details-v1-" in denied["reason"]

    assert main([*to_details, "--auto-allow-waypoint-policy"]) == 0
    allowed = orjson.loads(capsys.readouterr().out)
    assert (allowed["decision"], allowed["enforced_by"]) == ("ALLOW", ["waypoint", "ztunnel"])
    assert allowed["policy"] == "bookinfo/istio_allow_waypoint_bookinfo_waypoint"

    monkeypatch.setenv("PILOT_AUTO_ALLOW_WAYPOINT_POLICY", "true")
    assert main(to_details) == 0
    capsys.readouterr()
    # Straight to details' pod (pod traffic skips a service waypoint) from productpage: its
    # identity is neither sleep's nor the waypoint's, so the ALLOWs deny it.
    main(["config", "-f", str(mesh)])
    addresses = orjson.loads(capsys.readouterr().out)["resources"][
        "type.googleapis.com/istio.workload.Address"
    ]
    pods = [uid.rsplit("/", 1)[1] for uid in addresses if "//Pod/bookinfo/" in uid]
    pod = {name.split("-")[0]: f"bookinfo/{name}" for name in pods}
    direct = ["authz", "check", "-f", str(mesh), "--json", "--port", "9080"]
    assert main([*direct, "--from", pod["productpage"], "--to", pod["details"]]) == 1
    assert orjson.loads(capsys.readouterr().out)["enforced_by"] == ["ztunnel"]
