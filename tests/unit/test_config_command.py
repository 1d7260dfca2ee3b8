"""`ambient-fast config`: resources as JSON with readable addresses; bad input reported."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ambient_fast.cli import main

BOOKINFO = Path(__file__).resolve().parents[1] / "fixtures" / "meshes" / "bookinfo"
ADDRESS = "type.googleapis.com/istio.workload.Address"


def test_config_prints_the_resources_with_ip_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "-f", str(BOOKINFO)]) == 0
    resources = orjson.loads(capsys.readouterr().out)["resources"]
    service = resources[ADDRESS]["bookinfo/productpage.bookinfo.svc.cluster.local"]["service"]
    assert service["addresses"][0]["address"].startswith("10.96.")
    assert (
        "bookinfo/productpage-viewer"
        in resources["type.googleapis.com/istio.security.Authorization"]
    )


def test_a_broken_document_is_reported_and_the_rest_still_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: default}\n"
        "spec: {ports: [{port: http}]}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: good, namespace: default}\n"
        "spec: {ports: [{port: 80}]}\n"
    )
    assert main(["config", "-f", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "Service default/bad" in captured.err and "spec.ports[0].port" in captured.err
    assert (
        "default/good.default.svc.cluster.local" in orjson.loads(captured.out)["resources"][ADDRESS]
    )
