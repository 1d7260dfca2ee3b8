"""ztunnel configuration: Istio's variables, flags over environment, errors naming the input."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from ambient_fast.identity.ca import MeshCA
from ambient_fast.ztunnel import ConfigError, ProxyMode, ZtunnelConfig
from ambient_fast.ztunnel.app import Ztunnel
from ambient_fast.ztunnel.config import LogFormat, WorkloadInfo, add_arguments, from_args
from ambient_fast.ztunnel.durations import parse_duration


def load(env: dict[str, str], *argv: str) -> ZtunnelConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(list(argv)), env)


def test_defaults_are_istios() -> None:
    config = load({})
    assert config.xds_address == "https://localhost:15012"
    assert config.ca_address == "https://localhost:15012"
    assert (config.cluster_id, config.cluster_domain, config.secret_ttl) == (
        "Kubernetes",
        "cluster.local",
        86400.0,
    )
    assert (config.outbound_port, config.inbound_plaintext_port, config.inbound_port) == (
        15001,
        15006,
        15008,
    )
    assert (config.admin_port, config.stats_port, config.readiness_port) == (15000, 15020, 15021)
    assert config.proxy_mode is ProxyMode.SHARED and config.uses_xds


def test_in_a_cluster_istiod_is_the_default() -> None:
    assert load({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}).xds_address == (
        "https://istiod.istio-system.svc:15012"
    )


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "XDS_ADDRESS": "istiod.example:15012",
        "NODE_NAME": "node-a",
        "INSTANCE_IP": "10.244.1.1",
        "PROXY_MODE": "dedicated",
        "PROXY_WORKLOAD_INFO": "apps/echo/echo-sa",
        "LOG_FORMAT": "json",
        "SECRET_TTL": "1h30m",
        "LOCAL_XDS_PATH": "/etc/ztunnel/local.yaml",
    }
    config = load(env, "--node-name", "node-b", "--outbound-port", "16001")
    assert config.xds_address == "https://istiod.example:15012"  # scheme added, as ztunnel
    assert config.node_name == "node-b"
    assert config.instance_ip == ipaddress.ip_address("10.244.1.1")
    assert config.proxy_workload_info == WorkloadInfo("apps", "echo", "echo-sa")
    assert (config.log_format, config.secret_ttl) == (LogFormat.JSON, 5400.0)
    assert config.local_xds_path == Path("/etc/ztunnel/local.yaml") and not config.uses_xds
    assert config.outbound_port == 16001


def test_fake_ca_means_no_ca_address() -> None:
    assert load({"FAKE_CA": "true", "CA_ADDRESS": "ca:15012"}).ca_address is None


def test_two_fake_ca_proxies_given_one_root_sign_under_it(tmp_path: Path) -> None:
    ca = MeshCA.create()
    (tmp_path / "root-cert.pem").write_bytes(ca.root_pem)
    (tmp_path / "root-key.pem").write_bytes(ca.key_pem)
    env = {"PROXY_MODE": "dedicated", "FAKE_CA": "true", "FAKE_CA_ROOT": str(tmp_path)}
    client = load({**env, "PROXY_WORKLOAD_INFO": "perf/client/client"})
    server = load(env, "--proxy-workload-info", "perf/server/server")
    assert client.fake_ca_root == server.fake_ca_root == tmp_path
    signers = [Ztunnel(c).self_signed for c in (client, server)]
    assert [s.roots_pem if s else None for s in signers] == [ca.root_pem, ca.root_pem]
    # Without a root each proxy makes its own, which no other proxy trusts.
    alone = load({"PROXY_MODE": "dedicated", "FAKE_CA": "true", "PROXY_WORKLOAD_INFO": "a/b/c"})
    own = Ztunnel(alone).self_signed
    assert own is not None and own.roots_pem != ca.root_pem


def test_fake_ca_root_without_fake_ca_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FAKE_CA_ROOT needs FAKE_CA=true"):
        load({"FAKE_CA_ROOT": str(tmp_path)})


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"PROXY_MODE": "sidecar"}, (), "invalid PROXY_MODE='sidecar'"),
        ({"INSTANCE_IP": "not-an-ip"}, (), "invalid INSTANCE_IP='not-an-ip'"),
        ({"SECRET_TTL": "forever"}, (), "invalid SECRET_TTL='forever'"),
        ({}, ("--inbound-port", "70000"), "invalid --inbound-port='70000'"),
        ({"PROXY_MODE": "dedicated"}, (), "needs PROXY_WORKLOAD_INFO"),
        ({}, ("--admin-port", "15001"), "share a port"),
        ({"PROXY_WORKLOAD_INFO": "apps/echo"}, (), "expected namespace/name/service-account"),
        ({"ISTIO_META_DNS_CAPTURE": "maybe"}, (), "invalid ISTIO_META_DNS_CAPTURE='maybe'"),
        ({"XDS_ON_DEMAND": "true"}, (), "DNS proxy does not support XDS_ON_DEMAND"),
    ],
)
def test_bad_values_name_the_setting(
    env: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load(env, *argv)


def test_the_dns_proxy_is_on_unless_ztunnels_dns_capture_metadata_says_no() -> None:
    assert load({}).dns_proxy and load({}).dns_port == 15053
    assert not load({"ISTIO_META_DNS_CAPTURE": "false"}).dns_proxy
    assert not load({"ISTIO_META_DNS_CAPTURE": "true"}, "--dns-proxy", "false").dns_proxy
    on_demand = load({"XDS_ON_DEMAND": "true", "ISTIO_META_DNS_CAPTURE": "false"})
    assert on_demand.xds_on_demand and not on_demand.dns_proxy


def test_help_lists_every_setting_with_its_variable_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for expected in ("--xds-address", "(env XDS_ADDRESS)", "--inbound-port", "default: 15008"):
        assert expected in text


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1d", "h", "5s5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
