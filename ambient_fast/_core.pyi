"""Typed surface of the Cython splice engine (`ambient_fast/_core.pyx`)."""

class SpliceEngine:
    """One epoll loop on one native thread relaying socket pairs with splice(2).

    Methods are called from one Python thread (the event loop's); the worker thread
    never holds the GIL.
    """

    def __init__(self) -> None: ...
    def fileno(self) -> int:
        """The completion eventfd: readable when `completed()` has records."""
    def start(self, fd_a: int, fd_b: int) -> int:
        """Relays fd_a <-> fd_b and returns the pump id.

        On success the engine owns both fds and closes them when the pump ends; on an
        exception (not a stream socket, out of pipes) the caller still owns them.
        """
    def cancel(self, pump_id: int) -> None:
        """Resets both sockets of a running pump; it completes with errno ECANCELED and the
        bytes it had delivered.

        A no-op for pumps that already completed.
        """
    def completed(self) -> list[tuple[int, int, int, int]]:
        """Drains finished pumps as (pump_id, a_to_b, b_to_a, errno); errno 0 is clean."""
    def active(self) -> int:
        """Pumps started and not yet drained by `completed()`."""
    def close(self) -> None:
        """Stops the worker; running pumps are reset and reported with ECANCELED.

        Idempotent. `completed()` still returns the final records afterwards.
        """
