"""One back-off for every retry loop in Machinery and its plugins.

A delay doubles with each failure from ``base`` up to ``cap``, then shrinks by a random share of up to
``jitter`` (a quarter by default), so that many clients that failed together do not retry in step. Use
:func:`delay` where the loop counts its own failures and :class:`Backoff` where it is easier to keep
the count in an object.
"""

from __future__ import annotations

import random
import threading

__all__ = ["Backoff", "delay"]

#: doubling stops here: 2**60 times any base is past every cap
_MAX_DOUBLINGS = 60


def delay(attempt: int, base: float, cap: float, jitter: float = 0.25) -> float:
    """Seconds to wait before retry ``attempt`` (1 = after the first failure; 0 or less: no wait):
    ``base * 2**(attempt - 1)``, at most ``cap``, times a random factor in ``[1 - jitter, 1]``."""
    if attempt <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    return float(ceiling * (1.0 - jitter * random.random()))


class Backoff:
    """A failure counter with :func:`delay`: call :meth:`next` after each failure for the seconds to
    wait, :meth:`reset` after a success (Go Machinery's reconnect back-off never resets: a defect not
    repeated here)."""

    def __init__(self, base: float = 0.1, cap: float = 5.0, jitter: float = 0.25) -> None:
        if base <= 0 or cap < base or not 0 <= jitter <= 1:
            raise ValueError(
                f"Backoff needs 0 < base <= cap and 0 <= jitter <= 1 (got {base}, {cap}, {jitter})"
            )
        self.base = base
        self.cap = cap
        self.jitter = jitter
        #: failures since the last success
        self.attempt = 0

    def __repr__(self) -> str:
        return f"Backoff(base={self.base}, cap={self.cap}, attempt={self.attempt})"

    def next(self) -> float:
        """Count one failure; the seconds to wait before the next try."""
        self.attempt = min(self.attempt + 1, _MAX_DOUBLINGS + 1)
        return delay(self.attempt, self.base, self.cap, self.jitter)

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.attempt = 0

    def wait(self, stop: threading.Event) -> bool:
        """Count one failure and wait its delay, or until ``stop`` is set; True when it was set."""
        return stop.wait(self.next())
