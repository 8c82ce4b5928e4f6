"""Back-off: Go Machinery's Fibonacci task retries, and jittered reconnect delays for transports."""

from __future__ import annotations

import random

__all__ = ["Backoff", "fibonacci_next"]


def fibonacci_next(current: int) -> int:
    """The next Fibonacci number after ``current``: 0→1, 1→2, 2→3, 3→5, 4→5, 5→8, 8→13."""
    previous, value = 1, 1
    while value <= current:
        previous, value = value, previous + value
    return value


class Backoff:
    """Exponential back-off with jitter for reconnects: ``base`` doubling up to ``cap``.

    Call :meth:`next` after each failure for the delay to wait, and :meth:`reset` after a success
    (Go Machinery's reconnect back-off never resets: a defect not repeated here).
    """

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return float(delay * random.uniform(0.75, 1.0))

    def reset(self) -> None:
        self.attempt = 0
