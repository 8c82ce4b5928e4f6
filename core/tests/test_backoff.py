"""machinery.backoff: one back-off for every retry loop."""

from __future__ import annotations

import threading

import pytest

from machinery import backoff
from machinery.backoff import Backoff
from machinery.retry import Backoff as RetryBackoff


def test_delay_doubles_from_base_up_to_cap_without_jitter() -> None:
    delays = [backoff.delay(n, 0.1, 1.0, jitter=0.0) for n in range(0, 7)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_delay_with_jitter_stays_in_range_and_varies() -> None:
    seen = {backoff.delay(3, 0.1, 5.0, jitter=0.5) for _ in range(200)}
    assert all(0.2 <= d <= 0.4 for d in seen), seen
    assert len(seen) > 100, "jitter gives (nearly) every caller a different delay"


def test_huge_attempts_do_not_overflow() -> None:
    assert backoff.delay(10_000, 0.1, 3.0, jitter=0.0) == 3.0


def test_backoff_counts_failures_and_resets() -> None:
    b = Backoff(0.5, 4.0, jitter=0.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.attempt == 5
    b.reset()
    assert b.attempt == 0 and b.next() == 0.5


def test_backoff_default_jitter_keeps_the_old_retry_backoff_range() -> None:
    b = Backoff(1.0, 8.0)
    first = b.next()
    assert 0.75 <= first <= 1.0


def test_backoff_wait_returns_early_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    assert Backoff(10.0, 10.0).wait(stop) is True


@pytest.mark.parametrize(("base", "cap", "jitter"), [(0, 1, 0.1), (2, 1, 0.1), (1, 2, 1.5)])
def test_backoff_rejects_nonsense(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base, cap, jitter)


def test_retry_module_reexports_the_same_class() -> None:
    assert RetryBackoff is Backoff
