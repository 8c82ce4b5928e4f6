"""Go Machinery's Fibonacci task retries. (``Backoff``, the jittered reconnect delay, lives in
:mod:`machinery.backoff` and is re-exported here for code that imported it from this module.)"""

from __future__ import annotations

from .backoff import Backoff

__all__ = ["Backoff", "fibonacci_next"]


def fibonacci_next(current: int) -> int:
    """The next Fibonacci number after ``current``: 0→1, 1→2, 2→3, 3→5, 4→5, 5→8, 8→13."""
    previous, value = 1, 1
    while value <= current:
        previous, value = value, previous + value
    return value
