"""CONNECT :authority validation, without sockets: what an HBONE server answers 400 to."""

from __future__ import annotations

import ipaddress

import pytest

from ambient_fast.hbone.request import HboneTarget, InvalidAuthority, parse_authority


@pytest.mark.parametrize(
    ("authority", "host", "port", "ip"),
    [
        ("10.0.0.1:8080", "10.0.0.1", 8080, ipaddress.IPv4Address("10.0.0.1")),
        ("10.0.0.1:1", "10.0.0.1", 1, ipaddress.IPv4Address("10.0.0.1")),
        ("10.0.0.1:65535", "10.0.0.1", 65535, ipaddress.IPv4Address("10.0.0.1")),
        ("[fd00::1]:80", "fd00::1", 80, ipaddress.IPv6Address("fd00::1")),
        # IPv6 is normalised, so equal targets compare equal whatever the spelling.
        ("[FD00:0:0::1]:80", "fd00::1", 80, ipaddress.IPv6Address("fd00::1")),
        ("[::FFFF:a00:1]:443", "::ffff:a00:1", 443, ipaddress.IPv6Address("::ffff:a00:1")),
        ("echo.server.svc.cluster.local:80", "echo.server.svc.cluster.local", 80, None),
        ("Echo.Server.SVC.cluster.local:80", "echo.server.svc.cluster.local", 80, None),
        ("echo:9080", "echo", 9080, None),
        ("a-b.c-d:1", "a-b.c-d", 1, None),
    ],
)
def test_valid_authorities(
    authority: str,
    host: str,
    port: int,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> None:
    assert parse_authority(authority) == HboneTarget(host, port, ip)


@pytest.mark.parametrize(
    ("authority", "text"),
    [
        ("10.0.0.1:8080", "10.0.0.1:8080"),
        ("[fd00::1]:80", "[fd00::1]:80"),
        ("Echo.Server:80", "echo.server:80"),
    ],
)
def test_target_prints_as_an_authority(authority: str, text: str) -> None:
    assert str(parse_authority(authority)) == text
    assert parse_authority(text) == parse_authority(authority)


@pytest.mark.parametrize(
    "authority",
    [
        pytest.param("", id="empty"),
        pytest.param("10.0.0.1", id="missing-port"),
        pytest.param("echo.server", id="hostname-missing-port"),
        pytest.param("10.0.0.1:", id="empty-port"),
        pytest.param(":80", id="empty-host"),
        pytest.param("10.0.0.1:0", id="port-0"),
        pytest.param("10.0.0.1:65536", id="port-65536"),
        pytest.param("10.0.0.1:99999", id="port-99999"),
        pytest.param("10.0.0.1:http", id="port-name"),
        pytest.param("10.0.0.1:-1", id="port-negative"),
        pytest.param("10.0.0.1:+80", id="port-plus"),
        pytest.param("10.0.0.1: 80", id="port-space"),
        pytest.param("10.0.0.1:8_0", id="port-underscore"),
        pytest.param("10.0.0.1:\u0668\u0660", id="port-arabic-indic-digits"),
        pytest.param("10.0.0.1:\u00b2", id="port-superscript-digit"),
        pytest.param("fd00::1:80", id="unbracketed-v6"),
        pytest.param("::1", id="unbracketed-v6-no-port"),
        pytest.param("[fd00::1]", id="bracketed-v6-no-port"),
        pytest.param("[not-an-ip]:80", id="bracketed-hostname"),
        pytest.param("[10.0.0.1]:80", id="bracketed-v4"),
        pytest.param("[fe80::1%eth0]:80", id="v6-zone"),
        pytest.param("[fe80::1%x\r\ny]:80", id="v6-zone-crlf"),
        pytest.param("echo_server:80", id="underscore"),
        pytest.param("echo server:80", id="space"),
        pytest.param("-echo:80", id="leading-hyphen"),
        pytest.param("echo-:80", id="trailing-hyphen"),
        pytest.param("echo..server:80", id="empty-label"),
        pytest.param("echo.server.:80", id="trailing-dot"),
        pytest.param("echo/x:80", id="slash"),
        pytest.param("user@echo:80", id="userinfo"),
        pytest.param("echo\n:80", id="trailing-newline"),
        pytest.param("echo\r\nx-injected: 1:80", id="crlf"),
        pytest.param("a" * 64 + ".svc:80", id="label-over-63"),
        pytest.param(".".join(["a" * 63] * 4) + ":80", id="name-over-253"),
    ],
)
def test_invalid_authorities_name_the_input(authority: str) -> None:
    with pytest.raises(InvalidAuthority) as caught:
        parse_authority(authority)
    assert repr(authority) in str(caught.value)


def test_invalid_authority_is_a_value_error() -> None:
    # Callers that only know ValueError (config loaders, CLI) still catch it.
    with pytest.raises(ValueError, match="'foo'"):
        parse_authority("foo")
