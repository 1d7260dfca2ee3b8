"""The xDS client's connection policy without sockets: addresses, headers, reconnect backoff."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ambient_fast.state import StateStore
from ambient_fast.xds.client import XdsClient, XdsClientConfig, parse_address, token_file
from ambient_fast.xds.subscription import NodeIdentity

NODE = NodeIdentity("10.0.0.1", "ztunnel-abc", "istio-system", "node-a", cluster_id="c1")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("https://istiod.istio-system.svc:15012", ("istiod.istio-system.svc", 15012)),
        ("istiod.istio-system.svc", ("istiod.istio-system.svc", 15012)),
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("[fd00::1]:15012", ("fd00::1", 15012)),
    ],
)
def test_addresses_as_ztunnel_takes_them(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["https://:15012", "host:port"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match=address.replace("/", ".")):
        parse_address(address)


def test_headers_carry_the_bearer_token_and_the_cluster_id(tmp_path: Path) -> None:
    path = tmp_path / "istio-token"
    path.write_text("tok-1\n")
    config = XdsClientConfig("localhost:1", NODE, tls=None, token=token_file(path))
    client = XdsClient(config, StateStore())
    assert client._metadata() == [("clusterid", "c1"), ("authorization", "Bearer tok-1")]
    path.write_text("tok-2")  # rotated in place: read again at the next attempt
    assert ("authorization", "Bearer tok-2") in client._metadata()
    path.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        client._metadata()


class ScriptedClient(XdsClient):
    """Each attempt follows a script: (responses received, then the failure)."""

    def __init__(self, script: list[int], sleeps: list[float]) -> None:
        async def sleep(delay: float) -> None:
            sleeps.append(delay)
            if not self._script:
                raise asyncio.CancelledError  # the end of the test

        config = XdsClientConfig("localhost:1", NODE, tls=None, initial_backoff=0.01)
        super().__init__(config, StateStore(), sleep=sleep)
        self._script = script

    async def _stream_once(self) -> None:
        self._responses_on_stream = self._script.pop(0)
        self.connected = True
        raise ConnectionRefusedError(111, "Connection refused")


async def test_reconnects_back_off_and_reset_after_a_working_stream() -> None:
    sleeps: list[float] = []
    # Three refused attempts, one stream that got responses then broke, two more refusals.
    client = ScriptedClient([0, 0, 0, 2, 0, 0], sleeps)
    with pytest.raises(asyncio.CancelledError):
        await client.run()
    assert sleeps == [0.01, 0.02, 0.04, 0.01, 0.02, 0.04]
    assert not client.connected
    assert client.stats.last_error == "ConnectionRefusedError: [Errno 111] Connection refused"
