"""Shared pytest configuration: asyncio tests run on uvloop, like the data plane."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # pytest-asyncio's hook; overriding the event_loop_policy fixture is deprecated there.
    return {"uvloop": uvloop.new_event_loop}
