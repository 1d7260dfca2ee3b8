"""The access log's events, collected from `logging` (shared by the loopback and netns suites)."""

from __future__ import annotations

import logging

from ambient_fast.ztunnel.accesslog import LogEvent, event_of


class AccessEvents(logging.Handler):
    """Attach to ACCESS_LOGGER; `events` in order, `lines(message)` their fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[LogEvent] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = event_of(record)
        if event is not None:
            self.events.append(event)

    def lines(self, message: str = "connection complete") -> list[dict[str, str | int]]:
        return [dict(e.fields) for e in self.events if e.message == message]
