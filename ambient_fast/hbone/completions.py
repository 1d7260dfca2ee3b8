"""Native operations as asyncio futures: one `_native.Reactor` per event loop.

Native work reports to the reactor's queue and wakes the loop through an eventfd; the loop
thread resolves the futures and emits native log records to `logging`. Cancelling a future
aborts the native task; cancelling a `pump` cuts it instead, so its byte counts survive.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from ambient_fast import _native
from ambient_fast.pumps import PumpCut

Start = Callable[[_native.Reactor, int], None]


class Completions:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reactor = _native.Reactor()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._tokens = itertools.count(1)
        loop.add_reader(self._reactor.fileno(), self._on_ready)

    def submit(self, start: Start) -> asyncio.Future[Any]:
        """Starts a native operation (`start(reactor, token)`) and returns its future."""
        return self._start(start)[1]

    async def pump(self, start: Start) -> tuple[int, int]:
        """Runs a native pump to its two byte counts. Cancelling the caller cuts the pump (both
        ends reset) and raises PumpCut with the counts; a second cancel aborts it."""
        token, future = self._start(start)
        try:
            counts: tuple[int, int] = await asyncio.shield(future)
        except asyncio.CancelledError:
            self._reactor.cut(token)
            try:
                counts = await asyncio.shield(future)
            except asyncio.CancelledError:
                future.cancel()
                raise
            raise PumpCut(*counts) from None
        return counts

    def _start(self, start: Start) -> tuple[int, asyncio.Future[Any]]:
        token = next(self._tokens)
        future: asyncio.Future[Any] = self._loop.create_future()
        start(self._reactor, token)
        self._futures[token] = future
        future.add_done_callback(lambda f: self._on_done(token, f))
        return token, future

    def _on_done(self, token: int, future: asyncio.Future[Any]) -> None:
        if self._futures.pop(token, None) is not None and future.cancelled():
            self._reactor.cancel(token)

    def _on_ready(self) -> None:
        for level, name, message in _native.drain_logs():
            logging.getLogger(name).log(level, "%s", message)
        for token, value in self._reactor.drain():
            future = self._futures.pop(token, None)
            if future is None or future.done():
                continue
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

    def close(self) -> None:
        self._loop.remove_reader(self._reactor.fileno())
        for token, future in list(self._futures.items()):
            self._reactor.cancel(token)
            future.cancel()


_by_loop: dict[asyncio.AbstractEventLoop, Completions] = {}


def completions() -> Completions:
    """The running loop's Completions (created on first use, dropped when the loop closes)."""
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        for old in [old for old in _by_loop if old.is_closed()]:
            del _by_loop[old]
        found = _by_loop[loop] = Completions(loop)
    return found
