"""Local mode: the node proxy's state from ztunnel's YAML file instead of a control plane.

`LocalSource` puts a parsed file (`local_format`) into the `StateStore`, replacing what the
previous version put there; `LocalConfigWatcher` polls the file and keeps the last good
configuration in effect when an edit does not parse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ambient_fast.state.local_format import LocalConfig, LocalConfigError, parse_local_config
from ambient_fast.state.store import StateChange, StateStore
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

__all__ = [
    "LocalConfig",
    "LocalConfigError",
    "LocalConfigWatcher",
    "LocalSource",
    "load_local_config",
    "parse_local_config",
]

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0  # seconds
# A file written this close to the previous check is re-read even when its stamp looks
# unchanged: coarse timestamps can hide a second write in the same tick (as the model watcher).
RACY_WINDOW_NS = 2_000_000_000


def load_local_config(path: str | os.PathLike[str]) -> LocalConfig:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LocalConfigError(str(path), "", f"cannot read: {e}") from None
    return parse_local_config(text, str(path))


class LocalSource:
    """Puts a LocalConfig into a store, replacing what the previous one put there (only that:
    names from other sources are untouched)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._addresses: set[str] = set()
        self._authorizations: set[str] = set()

    def apply(self, config: LocalConfig) -> StateChange:
        addresses = self._store.apply(
            ADDRESS_TYPE_URL, config.addresses, self._addresses - config.addresses.keys()
        )
        policies = self._store.apply(
            AUTHORIZATION_TYPE_URL,
            config.authorizations,
            self._authorizations - config.authorizations.keys(),
        )
        for name, reason in {**addresses.rejected, **policies.rejected}.items():
            log.error("local config: %s refused by the store: %s", name, reason)
        self._addresses = set(config.addresses)
        self._authorizations = set(config.authorizations)
        return StateChange(
            addresses.change.workloads, addresses.change.services, policies.change.policies
        )


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


class LocalConfigWatcher:
    """Loads the file into the store and reloads it when it changes (mtime/size/inode polling).

    `poll()` checks once (tests call it directly); `run()` polls every `interval` with the
    injected `sleep`. A file that does not parse leaves the last good configuration in the
    store; `error` says why until a good version arrives.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        store: StateStore,
        *,
        interval: float = DEFAULT_POLL_INTERVAL,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = Path(path)
        self._source = LocalSource(store)
        self._interval = interval
        self._sleep = sleep
        self._now_ns = now_ns
        self._stamp: _Stamp | None = None
        self._last_check_ns = 0
        self._text: str | None = None  # the text last parsed, good or not
        self._text_error: LocalConfigError | None = None  # why that text is not in effect
        self.config: LocalConfig | None = None  # the configuration in effect
        self.error: LocalConfigError | None = None

    def poll(self) -> StateChange | None:
        """Checks the file once; returns the change if a new good version was applied."""
        started = self._now_ns()
        try:
            stat = self.path.stat()
        except OSError as e:
            self._stamp = None
            self._fail(LocalConfigError(str(self.path), "", f"cannot read: {e}"))
            return None
        stamp = _Stamp(stat.st_mtime_ns, stat.st_size, stat.st_ino)
        racy = stamp.mtime_ns >= self._last_check_ns - RACY_WINDOW_NS
        self._last_check_ns = started
        if stamp == self._stamp and not racy:
            return None
        self._stamp = stamp
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            self._fail(LocalConfigError(str(self.path), "", f"cannot read: {e}"))
            return None
        if text == self._text:
            self.error = self._text_error  # touched, or back as it was after a read failure
            return None
        self._text = text
        try:
            config = parse_local_config(text, str(self.path))
        except LocalConfigError as e:
            self._text_error = e
            self._fail(e)
            return None
        self._text_error = None
        self.config, self.error = config, None
        change = self._source.apply(config)
        log.info("local config %s loaded: %s", self.path, config.summary())
        return change

    def _fail(self, error: LocalConfigError) -> None:
        if self.error is None or str(error) != str(self.error):
            kept = self.config.summary() if self.config is not None else "nothing"
            log.warning("%s; keeping the last good configuration (%s)", error, kept)
        self.error = error
        return None

    async def run(self) -> None:
        """Polls forever (cancel to stop); the first check happens immediately."""
        while True:
            try:
                self.poll()
            except Exception:  # one bad poll must not stop the proxy
                log.exception("local config: poll of %s failed", self.path)
            await self._sleep(self._interval)
