"""`ambient-fast certs`: a mesh root and workload certificates written as PEM files."""

from __future__ import annotations

from pathlib import Path

from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.spiffe import Identity, InvalidIdentity


def write_demo_certificates(out: str, identities: list[str], trust_domain: str) -> int:
    """Writes root-cert.pem, root-key.pem and <ns>-<sa>.pem / -key.pem per identity."""
    try:
        parsed = [Identity.parse(i) for i in identities]
    except InvalidIdentity as e:
        print(f"certs: {e}")
        return 2
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    ca = MeshCA.create(trust_domain)
    (directory / "root-cert.pem").write_bytes(ca.root_pem)
    key_path = directory / "root-key.pem"
    key_path.write_bytes(ca.key_pem)
    key_path.chmod(0o600)
    for identity in parsed:
        cert, key = ca.issue(identity).write(
            directory, f"{identity.namespace}-{identity.service_account}"
        )
        print(f"{identity}: {cert} {key}")
    return 0
