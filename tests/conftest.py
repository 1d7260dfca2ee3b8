"""Shared pytest configuration: asyncio tests run on uvloop, like the data plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

import pytest
import uvloop

if TYPE_CHECKING:
    from hbone_harness import Loopback


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # pytest-asyncio's hook; overriding the event_loop_policy fixture is deprecated there.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def mesh() -> AsyncIterator[Loopback]:
    """Loopback suites: a client pool, an HBONE server dialing loopback targets, a backend."""
    # tests/integration is importable only once pytest collects it, hence the late import.
    from hbone_harness import loopback

    async with loopback() as mesh:
        yield mesh
