"""istio-cni's in-pod rules as reference 04 lists them, rendered without running anything."""

from __future__ import annotations

from ambient_fast.cni.rules import (
    CaptureConfig,
    CapturePorts,
    PolicyRoute,
    Variant,
    capture_rules,
    capture_rulesets,
)

# Reference 04, TPROXY variant, in order per table (our TPROXY rules also pin --on-ip).
REFERENCE_MANGLE = [
    "-A PREROUTING -j ISTIO_PRERT",
    "-A OUTPUT -j ISTIO_OUTPUT",
    "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
    "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
    "-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT",
    "-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY "
    "--on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
    "-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY "
    "--on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
    "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark "
    "--nfmask 0xffffffff --ctmask 0xffffffff",
]
REFERENCE_NAT = [
    "-A OUTPUT -j ISTIO_OUTPUT",
    "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
    "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT "
    "--to-ports 15001",
]


def table_rules(text: str, table: str) -> list[str]:
    section = text.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return [line for line in section.splitlines() if line.startswith("-A ")]


def test_tproxy_variant_is_reference_04_in_order() -> None:
    text = capture_rules()
    assert table_rules(text, "mangle") == REFERENCE_MANGLE
    assert table_rules(text, "nat") == REFERENCE_NAT


def test_each_table_declares_the_chains_it_uses_and_commits() -> None:
    text = capture_rules()
    assert text.count("COMMIT") == 2
    mangle = text.split("*nat", 1)[0]
    assert ":ISTIO_PRERT - [0:0]" in mangle and ":ISTIO_OUTPUT - [0:0]" in mangle
    assert "*nat\n:ISTIO_OUTPUT - [0:0]\n" in text


def test_redirect_variant_captures_inbound_with_nat_and_keeps_the_return_path() -> None:
    text = capture_rules(CaptureConfig(variant=Variant.REDIRECT))
    mangle = table_rules(text, "mangle")
    assert not any("TPROXY" in rule for rule in mangle)
    assert any("--set-xmark 0x111/0xfff" in rule for rule in mangle)
    assert any("--restore-mark" in rule for rule in mangle)
    nat = table_rules(text, "nat")
    assert nat[0] == "-A PREROUTING -j ISTIO_PRERT"
    assert any("--dport 15008" in r and r.endswith("--to-ports 15008") for r in nat)
    assert any(r.endswith("REDIRECT --to-ports 15006") for r in nat)
    assert nat[-1].endswith("REDIRECT --to-ports 15001")
    # The redirect variant has no TPROXY'd connections to let through the nat output chain.
    assert not any("--mark 0x111/0xfff -j ACCEPT" in r for r in nat)


def test_dns_capture_and_probe_exemption_are_options() -> None:
    text = capture_rules(CaptureConfig(probe_source=None, capture_dns=True))
    assert "169.254.7.127" not in text
    assert "--dport 53" not in capture_rules() and "*raw" not in capture_rules()


def test_dns_capture_is_istio_cnis_and_spares_the_proxys_own_queries() -> None:
    text = capture_rules(CaptureConfig(capture_dns=True))
    nat = table_rules(text, "nat")
    # Current istio-cni (cni/pkg/iptables/iptables.go): UDP and TCP, never the proxy's own.
    dns = [
        "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 "
        "-j REDIRECT --to-ports 15053",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff "
        "-j REDIRECT --to-ports 15053",
    ]
    at = nat.index(dns[0])
    assert nat[at : at + 2] == dns
    # Before everything else of the output chain lets TCP go or sends it to 15001.
    assert nat[at + 2 :] == REFERENCE_NAT[2:]
    assert table_rules(text, "raw") == [
        "-A PREROUTING -j ISTIO_PRERT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1",
        "-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1",
    ]
    raw = capture_rulesets(CaptureConfig(capture_dns=True))[2]
    assert raw.jumps == ("PREROUTING -j ISTIO_PRERT", "OUTPUT -j ISTIO_OUTPUT")


def test_ports_are_configurable() -> None:
    ports = CapturePorts(outbound=25001, inbound_plaintext=25006, hbone=25008)
    text = capture_rules(CaptureConfig(ports=ports))
    assert "--on-port 25008" in text and "--on-port 25006" in text
    assert "--to-ports 25001" in text
    assert "1500" not in text.replace("15053", "")


def test_jumps_are_separate_so_a_reapply_can_skip_present_ones() -> None:
    mangle, nat = capture_rulesets()
    assert mangle.jumps == ("PREROUTING -j ISTIO_PRERT", "OUTPUT -j ISTIO_OUTPUT")
    assert nat.jumps == ("OUTPUT -j ISTIO_OUTPUT",)
    assert not any("PREROUTING -j" in rule or "OUTPUT -j ISTIO" in rule for rule in mangle.rules)


def test_policy_route_is_the_reference_one() -> None:
    route = PolicyRoute()
    assert " ".join(route.rule) == "fwmark 0x111/0xfff pref 32764 lookup 100"
    assert " ".join(route.route) == "local 0.0.0.0/0 dev lo table 100"
