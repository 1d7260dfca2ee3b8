"""istio-cni's in-pod redirection rules (reference 04), rendered as iptables-restore input.

Pure rendering: no commands run here. The rules live inside the pod's own network namespace;
the node proxy's in-pod listeners (15001 outbound, 15006 inbound plaintext, 15008 HBONE) sit
in the same namespace, so capture is a local redirect, never a hop to another namespace.

Two variants, as istio-cni has them:
- TPROXY (default): inbound via mangle TPROXY, which keeps the original destination as the
  socket's local address; outbound via nat REDIRECT (SO_ORIGINAL_DST).
- REDIRECT: everything via nat REDIRECT, for kernels without TPROXY.

DNS capture (optional, as istio-cni's redirectDNS): the pod's DNS to any non-loopback resolver
(UDP and TCP port 53) goes to the proxy's DNS port, except the proxy's own queries (mark 0x539),
which the raw table puts in conntrack zone 1 with their answers so they never collide with the
pod's redirected ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Marks (reference 04): the proxy's own sockets, and connections it has redirected.
PROXY_MARK = 0x539
REDIRECTED_MARK = 0x111
MARK_MASK = 0xFFF
# The routing table that delivers TPROXY'd packets locally, and the rule's priority.
LOCAL_ROUTE_TABLE = 100
LOCAL_ROUTE_RULE_PRIORITY = 32764
# kubelet probes arrive from this address (istio-cni SNATs them on the node).
DEFAULT_PROBE_SOURCE = "169.254.7.127"
PRERT_CHAIN = "ISTIO_PRERT"
OUTPUT_CHAIN = "ISTIO_OUTPUT"
# istio-cni's conntrack zone for the proxy's upstream DNS (istio/istio#33469).
DNS_CONNTRACK_ZONE = 1


class Variant(enum.Enum):
    TPROXY = "tproxy"
    REDIRECT = "redirect"


@dataclass(frozen=True, slots=True)
class CapturePorts:
    """The in-pod listeners of the node proxy (Istio's defaults)."""

    outbound: int = 15001
    inbound_plaintext: int = 15006
    hbone: int = 15008
    dns: int = 15053


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    variant: Variant = Variant.TPROXY
    ports: CapturePorts = CapturePorts()
    probe_source: str | None = DEFAULT_PROBE_SOURCE
    capture_dns: bool = False


def _mark(value: int) -> str:
    return f"{value:#x}/{MARK_MASK:#x}"


@dataclass(frozen=True, slots=True)
class Ruleset:
    """One table's part: the chains we own, the jumps into them, and their rules."""

    table: str
    chains: tuple[str, ...]
    jumps: tuple[str, ...]
    rules: tuple[str, ...]

    def restore_text(self) -> str:
        """iptables-restore --noflush input: declaring our chains flushes them, so applying
        twice leaves one copy of each rule. Jumps are in `jumps`, for the caller to add
        only when absent."""
        lines = [f"*{self.table}", *(f":{chain} - [0:0]" for chain in self.chains)]
        lines += [f"-A {rule}" for rule in (*self.jumps, *self.rules)]
        return "\n".join([*lines, "COMMIT", ""])


def _mangle(config: CaptureConfig) -> Ruleset:
    """The return path of both variants (the proxy dials the pod from the client's IP, so
    the pod's replies are marked back to it), and TPROXY's inbound capture."""
    ports = config.ports
    rules = [
        f"{PRERT_CHAIN} -m mark --mark {_mark(PROXY_MARK)} "
        f"-j CONNMARK --set-xmark {_mark(REDIRECTED_MARK)}",
    ]
    if config.variant is Variant.TPROXY:
        if config.probe_source:
            rules.append(f"{PRERT_CHAIN} -s {config.probe_source}/32 -p tcp -m tcp -j ACCEPT")
        tproxy = f"--on-ip 0.0.0.0 --tproxy-mark {_mark(REDIRECTED_MARK)}"
        rules += [
            f"{PRERT_CHAIN} ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT",
            f"{PRERT_CHAIN} -p tcp -m tcp --dport {ports.hbone} "
            f"-m mark ! --mark {_mark(PROXY_MARK)} -j TPROXY --on-port {ports.hbone} {tproxy}",
            f"{PRERT_CHAIN} -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"{PRERT_CHAIN} ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {_mark(PROXY_MARK)} "
            f"-j TPROXY --on-port {ports.inbound_plaintext} {tproxy}",
        ]
    rules.append(
        f"{OUTPUT_CHAIN} -m connmark --mark {_mark(REDIRECTED_MARK)} "
        "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
    )
    return Ruleset(
        "mangle",
        (PRERT_CHAIN, OUTPUT_CHAIN),
        (f"PREROUTING -j {PRERT_CHAIN}", f"OUTPUT -j {OUTPUT_CHAIN}"),
        tuple(rules),
    )


def _redirect_inbound_nat(config: CaptureConfig) -> list[str]:
    ports = config.ports
    rules = []
    if config.probe_source:
        rules.append(f"{PRERT_CHAIN} -s {config.probe_source}/32 -p tcp -m tcp -j ACCEPT")
    rules += [
        f"{PRERT_CHAIN} ! -d 127.0.0.1/32 -p tcp -m tcp --dport {ports.hbone} "
        f"-m mark ! --mark {_mark(PROXY_MARK)} -j REDIRECT --to-ports {ports.hbone}",
        f"{PRERT_CHAIN} ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {_mark(PROXY_MARK)} "
        f"-j REDIRECT --to-ports {ports.inbound_plaintext}",
    ]
    return rules


def _nat(config: CaptureConfig) -> Ruleset:
    ports = config.ports
    chains: tuple[str, ...] = (OUTPUT_CHAIN,)
    jumps: tuple[str, ...] = (f"OUTPUT -j {OUTPUT_CHAIN}",)
    rules: list[str] = []
    if config.variant is Variant.REDIRECT:
        chains = (PRERT_CHAIN, OUTPUT_CHAIN)
        jumps = (f"PREROUTING -j {PRERT_CHAIN}", *jumps)
        rules += _redirect_inbound_nat(config)
    if config.probe_source:
        rules.append(f"{OUTPUT_CHAIN} -d {config.probe_source}/32 -p tcp -m tcp -j ACCEPT")
    if config.capture_dns:
        not_proxy = f"-m mark ! --mark {_mark(PROXY_MARK)}"
        rules += [
            f"{OUTPUT_CHAIN} ! -o lo -p udp {not_proxy} -m udp --dport 53 "
            f"-j REDIRECT --to-ports {ports.dns}",
            f"{OUTPUT_CHAIN} ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 {not_proxy} "
            f"-j REDIRECT --to-ports {ports.dns}",
        ]
    if config.variant is Variant.TPROXY:
        rules.append(f"{OUTPUT_CHAIN} -p tcp -m mark --mark {_mark(REDIRECTED_MARK)} -j ACCEPT")
    rules += [
        f"{OUTPUT_CHAIN} ! -d 127.0.0.1/32 -o lo -j ACCEPT",
        f"{OUTPUT_CHAIN} ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {_mark(PROXY_MARK)} "
        f"-j REDIRECT --to-ports {ports.outbound}",
    ]
    return Ruleset("nat", chains, jumps, tuple(rules))


def _raw_dns() -> Ruleset:
    """The proxy's DNS queries and their answers in their own conntrack zone."""
    zone = f"-j CT --zone {DNS_CONNTRACK_ZONE}"
    return Ruleset(
        "raw",
        (PRERT_CHAIN, OUTPUT_CHAIN),
        (f"PREROUTING -j {PRERT_CHAIN}", f"OUTPUT -j {OUTPUT_CHAIN}"),
        (
            f"{OUTPUT_CHAIN} -p udp -m mark --mark {_mark(PROXY_MARK)} -m udp --dport 53 {zone}",
            f"{PRERT_CHAIN} -p udp -m mark ! --mark {_mark(PROXY_MARK)} -m udp --sport 53 {zone}",
        ),
    )


def capture_rulesets(config: CaptureConfig = CaptureConfig()) -> tuple[Ruleset, ...]:
    """The tables' parts of one pod's capture, mangle first (raw last, with DNS capture)."""
    if config.capture_dns:
        return (_mangle(config), _nat(config), _raw_dns())
    return (_mangle(config), _nat(config))


def capture_rules(config: CaptureConfig = CaptureConfig()) -> str:
    """One iptables-restore --noflush input installing the whole capture (jumps included),
    for a namespace that has none of our rules yet."""
    return "".join(ruleset.restore_text() for ruleset in capture_rulesets(config))


@dataclass(frozen=True, slots=True)
class PolicyRoute:
    """`ip rule` + `ip route` that deliver 0x111-marked packets (TPROXY'd connections, and the
    pod's replies to connections the proxy dialled from the client's IP) to local sockets."""

    rule: tuple[str, ...] = (
        "fwmark", _mark(REDIRECTED_MARK), "pref", str(LOCAL_ROUTE_RULE_PRIORITY),
        "lookup", str(LOCAL_ROUTE_TABLE),
    )  # fmt: skip
    route: tuple[str, ...] = (
        "local", "0.0.0.0/0", "dev", "lo", "table", str(LOCAL_ROUTE_TABLE),
    )  # fmt: skip
