"""Where the DNS proxy forwards: resolv.conf read as glibc and ztunnel's resolver read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient_fast.ztunnel import ConfigError
from ambient_fast.ztunnel.dns.forwarder import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT,
    ResolvConf,
    ResolvConfError,
)


def test_a_pods_resolv_conf() -> None:
    conf = ResolvConf.parse(
        "# kubelet's\nnameserver 10.96.0.10\n"
        "search demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
    assert conf == ResolvConf(
        ("10.96.0.10",), ("demo.svc.cluster.local", "svc.cluster.local", "cluster.local")
    )
    assert (conf.timeout, conf.attempts) == (DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS) == (5.0, 2)


def test_every_nameserver_in_order_bad_ones_skipped_scopes_dropped() -> None:
    conf = ResolvConf.parse(
        "nameserver 10.0.0.1\nnameserver not-an-ip\n; comment\nnameserver fe80::1%eth0\n"
        "nameserver 2001:db8::53\n"
    )
    assert conf.nameservers == ("10.0.0.1", "fe80::1", "2001:db8::53")


def test_the_last_search_or_domain_line_wins() -> None:
    assert ResolvConf.parse("nameserver 1.1.1.1\nsearch a b\ndomain c\n").search == ("c",)
    assert ResolvConf.parse("nameserver 1.1.1.1\ndomain c\nsearch a b\n").search == ("a", "b")


@pytest.mark.parametrize(
    ("options", "timeout", "attempts"),
    [
        ("timeout:1 attempts:1", 1.0, 1),
        ("timeout:0 attempts:0", 1.0, 1),  # at least one try of at least a second
        ("timeout:99 attempts:9", 30.0, 5),  # glibc's bounds
        ("rotate timeout:x", 5.0, 2),  # unknown and malformed options ignored
    ],
)
def test_timeout_and_attempts_options(options: str, timeout: float, attempts: int) -> None:
    conf = ResolvConf.parse(f"nameserver 1.1.1.1\noptions {options}\n")
    assert (conf.timeout, conf.attempts) == (timeout, attempts)


def test_no_nameserver_is_a_configuration_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("search cluster.local\nnameserver bogus\n")
    with pytest.raises(ConfigError, match=f"{path}: no nameserver line.*DNS_CAPTURE=false"):
        ResolvConf.load(path)
    with pytest.raises(ResolvConfError, match=f"{tmp_path / 'missing'}: No such file"):
        ResolvConf.load(tmp_path / "missing")
