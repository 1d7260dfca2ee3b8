"""Certificate rotation under continuous traffic: 10 s workload certificates (the control
plane's minimum lowered to match) on the two-node mesh of `two_nodes.py`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from mesh_harness import ask
from two_nodes import ECHO_VIP, TRUST, Mesh, running_mesh

from ambient_fast.mesh.cluster import ADMIN_PORT
from ambient_fast.mesh.process import http_get


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("rotation"), cert_ttl="10s") as mesh:
        yield mesh


def serials(mesh: Mesh) -> str:
    status, dump = http_get(
        mesh.topology, mesh.topology.nodes["node-b"].netns,
        f"http://localhost:{ADMIN_PORT}/config_dump",
    )  # fmt: skip
    assert status == 200 and f"{TRUST}/server" in dump
    return dump


def test_rotation_under_continuous_traffic_loses_no_connection(mesh: Mesh) -> None:
    """10 s certificates refresh at half-life: 25 s of traffic spans several rotations."""
    before = serials(mesh)
    failures: list[str] = []
    count = 0
    end = time.monotonic() + 25
    while time.monotonic() < end:
        try:
            ask(mesh.topology, "client", ECHO_VIP, 80)
        except OSError as e:
            failures.append(str(e))
        count += 1
        time.sleep(0.05)
    assert failures == [], f"{len(failures)} of {count} failed"
    # The dump shows other certificates now, and the log counts the rotations.
    assert serials(mesh) != before
    issued = mesh.ztunnels["node-b"].log.read_text().count(f"certificate for {TRUST}/server ")
    assert issued >= 4, f"only {issued} certificates for the server in 25 s"
