"""The node proxy's admin (localhost:15000) and readiness (:15021) endpoints.

`AdminEndpoint` answers `/config_dump` (workloads, services, policies and certificates in the
shape `istioctl ztunnel-config -f dump.json` reads: istio/istio
istioctl/pkg/writer/ztunnel/configdump/api.go), `/logging` (GET shows levels, POST
`?level=debug` or `?level=scope:debug,...` changes them) and `/quitquitquit` (POST: drain and
exit). `readiness` answers `/healthz/ready`. `HttpServer` is a one-request-per-connection
asyncio HTTP/1.1 server around such a handler (no keep-alive: these are debugging endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from google.protobuf import json_format

from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics.server import BadRequest, Request, parse_request_head
from ambient_fast.policy.proto import to_authorization
from ambient_fast.state import Service, StateStore, Workload

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
_SCOPE_PREFIX = "ambient_fast."


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def encode(self) -> bytes:
        head = (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}\r\n"
            f"content-type: {self.content_type}\r\ncontent-length: {len(self.body)}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


Handler = Callable[[Request], Reply]


class HttpServer:
    """Serves `handler` on host:port (port 0 picks one); one request per connection."""

    def __init__(self, handler: Handler, host: str | None, port: int, name: str) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._name = name
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_HEAD_BYTES
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"{self._name} server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        others = [t for t in self._connections if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                reply = self._handler(parse_request_head(head))
            except BadRequest as e:
                reply = Reply(400, f"{e}\n".encode())
            writer.write(reply.encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            log.debug("%s: connection dropped: %r", self._name, e)
        except TimeoutError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


def readiness(is_ready: Callable[[], bool]) -> Handler:
    """`/healthz/ready`: 200 when `is_ready()`, else 503 (Istio's readiness probe path)."""

    def handle(request: Request) -> Reply:
        if request.path != "/healthz/ready":
            return Reply(404)
        return Reply(200, b"ready\n") if is_ready() else Reply(503, b"not ready\n")

    return handle


# -- /config_dump ----------------------------------------------------------------------------


def _gateway(address: Any) -> dict[str, str] | None:
    return None if address is None else {"destination": str(address.destination)}


def workload_dump(workload: Workload) -> dict[str, Any]:
    dump: dict[str, Any] = {
        "uid": workload.uid,
        "workloadIps": [str(ip) for ip in workload.ips],
        "protocol": "HBONE" if workload.captured else "TCP",
        "name": workload.name,
        "namespace": workload.namespace,
        "serviceAccount": workload.service_account,
        "workloadName": workload.workload_name,
        "workloadType": workload.workload_type.value.lower(),
        "canonicalName": workload.canonical_name,
        "canonicalRevision": workload.canonical_revision,
        "clusterId": workload.cluster_id,
        "trustDomain": workload.trust_domain,
        "locality": {
            k: v
            for k, v in (
                ("region", workload.locality.region),
                ("zone", workload.locality.zone),
                ("subzone", workload.locality.subzone),
            )
            if v
        },
        "node": workload.node,
        "network": workload.network,
        "status": "Healthy" if workload.healthy else "Unhealthy",
        "hostname": workload.hostname,
        "capacity": workload.capacity,
        "services": {
            key: {str(p): t for p, t in ports.items()} for key, ports in workload.services.items()
        },
    }
    for key, address in (
        ("waypoint", workload.waypoint),
        ("networkGateway", workload.network_gateway),
    ):
        if address is not None:
            dump[key] = _gateway(address)
    if workload.application_tunnel is not None:
        tunnel: dict[str, Any] = {"protocol": workload.application_tunnel.protocol.value}
        if workload.application_tunnel.port is not None:
            tunnel["port"] = workload.application_tunnel.port
        dump["applicationTunnel"] = tunnel
    if workload.authorization_policies:
        dump["authorizationPolicies"] = list(workload.authorization_policies)
    return dump


def service_dump(store: StateStore, service: Service) -> dict[str, Any]:
    endpoints: dict[str, Any] = {}
    for workload in store.workloads():
        ports = workload.services.get(service.key)
        if ports is None:
            continue
        endpoints[f"{workload.uid}"] = {
            "workloadUid": workload.uid,
            "service": service.key,
            "port": {str(p): t for p, t in ports.items()},
        }
    dump: dict[str, Any] = {
        "name": service.name,
        "namespace": service.namespace,
        "hostname": service.hostname,
        "vips": [str(vip) for vip in service.vips],
        "ports": {str(p): port.target_port for p, port in service.ports.items()},
        "endpoints": endpoints,
        "ipFamilies": service.ip_families.value,
    }
    if service.subject_alt_names:
        dump["subjectAltNames"] = list(service.subject_alt_names)
    if service.waypoint is not None:
        dump["waypoint"] = _gateway(service.waypoint)
    lb = service.load_balancing
    if lb is not None:
        dump["loadBalancer"] = {
            "mode": lb.mode.value,
            "routingPreferences": [s.value for s in lb.routing_preference],
            "healthPolicy": lb.health_policy.value,
        }
    return dump


def _capitalize_matches(value: Any) -> Any:
    """istioctl's StringMatch keys are Exact/Prefix/Suffix/Presence."""
    if isinstance(value, dict):
        return {
            (k.capitalize() if k in ("exact", "prefix", "suffix", "presence") else k): (
                _capitalize_matches(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_capitalize_matches(v) for v in value]
    return value


def _pascal(value: str) -> str:
    """WORKLOAD_SELECTOR -> WorkloadSelector (ztunnel's serde names)."""
    return "".join(part.capitalize() for part in value.split("_"))


def policy_dump(store: StateStore) -> list[dict[str, Any]]:
    dumps = []
    for policy in store.policies():
        message = to_authorization(policy)
        rules = [
            [
                [_capitalize_matches(json_format.MessageToDict(match)) for match in clause.matches]
                for clause in rule.clauses
            ]
            for rule in message.rules
        ]
        dumps.append(
            {
                "name": policy.name,
                "namespace": policy.namespace,
                "scope": _pascal(policy.scope.value),
                "action": _pascal(policy.action.value),
                "rules": rules,
            }
        )
    return dumps


def _time(timestamp: float) -> str:
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


def certificate_dump(manager: CertificateManager) -> list[dict[str, Any]]:
    dumps = []
    for status in manager.status():
        chain: list[dict[str, str]] = []
        roots: list[dict[str, str]] = []
        certificate = status.certificate
        if certificate is not None:
            chain.append(
                {
                    "pem": certificate.chain_pem.decode(),
                    "serialNumber": f"{certificate.serial:x}",
                    "validFrom": _time(certificate.not_before),
                    "expirationTime": _time(certificate.not_after),
                }
            )
            roots.append({"pem": certificate.roots_pem.decode()})
        dumps.append(
            {
                "identity": str(status.identity),
                "state": status.state,
                "certChain": chain,
                "rootCerts": roots,
            }
        )
    return dumps


def config_dump(
    store: StateStore,
    manager: CertificateManager,
    workload_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`workload_state`: in-pod mode's pods (ztunnel's `workloadState`: uid -> state, info)."""
    dump: dict[str, Any] = {
        "workloads": [workload_dump(w) for w in store.workloads()],
        "services": [service_dump(store, s) for s in store.services()],
        "policies": policy_dump(store),
        "certificates": certificate_dump(manager),
    }
    if workload_state is not None:
        dump["workloadState"] = workload_state
    return dump


# -- /logging --------------------------------------------------------------------------------


def _level_name(level: int) -> str:
    return logging.getLevelName(level).lower()


def logging_levels() -> str:
    """`current log level is info` plus each scope with its own level."""
    root = logging.getLogger()
    lines = [f"current log level is {_level_name(root.level)}"]
    for name in sorted(logging.root.manager.loggerDict):
        logger = logging.root.manager.loggerDict[name]
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            lines.append(f"{name.removeprefix(_SCOPE_PREFIX)}: {_level_name(logger.level)}")
    return "\n".join(lines) + "\n"


def set_logging_levels(spec: str) -> None:
    """`debug` (everything) or `scope:level,...` (scope: a logger under ambient_fast, or a full
    logger name). Raises ValueError naming the bad item."""
    changes: list[tuple[logging.Logger, int]] = []
    for item in (i.strip() for i in spec.split(",")):
        scope, _, level = item.rpartition(":")
        if level.lower() not in _LEVELS:
            raise ValueError(f"level {item!r}: expected one of {', '.join(_LEVELS)}")
        name = (
            "" if not scope else scope if scope.startswith(_SCOPE_PREFIX) else _SCOPE_PREFIX + scope
        )
        changes.append((logging.getLogger(name or None), _LEVELS[level.lower()]))
    for logger, value in changes:
        logger.setLevel(value)


class AdminEndpoint:
    """The admin paths over the store, the certificates, a `quit` callback and, in in-pod mode,
    the pods' state (sans-IO)."""

    def __init__(
        self,
        store: StateStore,
        manager: CertificateManager,
        quit: Callable[[], None],
        workload_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._store = store
        self._manager = manager
        self._quit = quit
        self._workload_state = workload_state

    def __call__(self, request: Request) -> Reply:
        path = request.path
        if path == "/config_dump":
            pods = self._workload_state() if self._workload_state is not None else None
            dump = config_dump(self._store, self._manager, pods)
            body = orjson.dumps(dump, option=orjson.OPT_INDENT_2)
            return Reply(200, body, "application/json")
        if path == "/logging":
            if request.method == "POST":
                query = parse_qs(urlsplit(request.target).query)
                spec = query.get("level", [""])[0]
                if spec:
                    try:
                        set_logging_levels(spec)
                    except ValueError as e:
                        return Reply(400, f"{e}\n".encode())
            elif request.method != "GET":
                return Reply(405)
            return Reply(200, logging_levels().encode())
        if path == "/quitquitquit":
            if request.method != "POST":
                return Reply(405, b"use POST\n")
            self._quit()
            return Reply(200, b"draining\n")
        return Reply(404)
