"""Waiting on conditions with deadlines (never a bare sleep standing in for readiness)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Longest any single expected event may take on a loaded 2-core CI machine.
DEADLINE = 10.0


async def wait_until(condition: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    """Polls `condition` until it holds; fails naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)
