"""What a byte pump reports when the connection it carries is cut.

Every pump (the HBONE pumps in `_native`, the splice relay in `_core`) treats the cancellation
of the task awaiting it as a cut: both ends are reset and `PumpCut` carries the bytes moved.
"""

from __future__ import annotations

import asyncio

# The error a cut connection is recorded with when no more specific reason (a policy) is known.
CUT_ERROR = "cancelled"


class PumpCut(asyncio.CancelledError):
    """The awaiting task was cancelled and the pump cut (both ends reset) after moving
    `counts` bytes, in the order the pump's own result gives them. Still a cancellation:
    catch it to record the bytes, then re-raise."""

    def __init__(self, first: int, second: int) -> None:
        super().__init__(f"pump cut after {first} and {second} bytes")
        self.counts = (first, second)
