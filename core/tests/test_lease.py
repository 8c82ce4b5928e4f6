"""machinery.lease.LeaseKeeper and machinery.forking.at_fork."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time

import pytest

from machinery import codec, forking
from machinery.delivery import BaseDelivery
from machinery.lease import LeaseKeeper
from machinery.signature import Signature


class Leased(BaseDelivery):
    def __init__(self, n: int) -> None:
        super().__init__(codec.encode_signature(Signature("t", [n])))
        self.n = n

    def _ack(self) -> None:
        return None

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        return None


class Renewals:
    """A broker's renew(): records each call's deliveries and lets a test wait for the next call."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[float, list[int]]] = []
        self.fail = fail
        self.cond = threading.Condition()

    def __call__(self, deliveries: list[Leased]) -> None:
        with self.cond:
            self.calls.append((time.monotonic(), sorted(d.n for d in deliveries)))
            self.cond.notify_all()
            if self.fail > 0:
                self.fail -= 1
                raise ConnectionError("server gone")

    def wait_for(self, count: int, timeout: float = 5.0) -> list[list[int]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= count, timeout), f"only {self.calls}"
            return [ns for _, ns in self.calls]


def test_renews_live_deliveries_and_drops_settled_ones() -> None:
    renew = Renewals()
    keeper = LeaseKeeper(renew, 0.02, name="test-keeper")
    one, two = Leased(1), Leased(2)
    keeper.add([one, two])
    assert renew.wait_for(1)[0] == [1, 2]
    one.ack()
    start = len(renew.calls)
    calls = renew.wait_for(start + 1)
    assert calls[-1] == [2]
    assert keeper.live() == [two]
    assert keeper.close() == [two], "close() hands back what is still live"
    assert keeper.live() == []


def test_no_renewal_after_close_and_no_call_when_idle() -> None:
    renew = Renewals()
    keeper = LeaseKeeper(renew, 0.01)
    d = Leased(1)
    keeper.add([d])
    renew.wait_for(1)
    d.ack()
    keeper.close()
    after = len(renew.calls)
    time.sleep(0.1)  # nothing to wait for: we check that nothing happens
    assert len(renew.calls) == after
    assert [t.name for t in threading.enumerate() if t.name == keeper.name] == []


def test_renew_when_idle_calls_without_deliveries() -> None:
    renew = Renewals()
    keeper = LeaseKeeper(renew, 0.01, renew_when_idle=True)
    keeper.start()
    assert renew.wait_for(2)[:2] == [[], []]
    keeper.close()


def test_reusable_after_close() -> None:
    renew = Renewals()
    keeper = LeaseKeeper(renew, 0.01)
    keeper.add([Leased(1)])
    renew.wait_for(1)
    keeper.close()
    keeper.add([Leased(7)])
    assert renew.wait_for(len(renew.calls) + 1)[-1] == [7]
    keeper.close()


def test_survives_exceptions_with_one_warning_and_retries_sooner(caplog: pytest.LogCaptureFixture) -> None:
    renew = Renewals(fail=3)
    interval = 0.4
    keeper = LeaseKeeper(renew, interval, name="flaky")
    with caplog.at_level(logging.DEBUG, logger="machinery.lease"):
        keeper.add([Leased(1)])
        renew.wait_for(5)
        keeper.close()
    times = [t for t, _ in renew.calls]
    after_failures = [b - a for a, b in itertools.pairwise(times[:4])]
    assert max(after_failures) < interval, f"a failed renewal waits less than the interval: {after_failures}"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "server gone" in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_interval_may_be_read_each_time() -> None:
    seconds = [5.0]
    keeper = LeaseKeeper(Renewals(), lambda: seconds[0])
    assert keeper.interval == 5.0
    seconds[0] = 0.5
    assert keeper.interval == 0.5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_empty() -> None:
    renew = Renewals()
    keeper = LeaseKeeper(renew, 0.01)
    keeper.add([Leased(1)])
    renew.wait_for(1)
    pid = os.fork()
    if pid == 0:  # the child: no parent's leases, and it can keep leases of its own
        ok = keeper.live() == [] and keeper._thread is None
        keeper.add([Leased(2)])
        ok = ok and keeper.live()[0].n == 2
        keeper.close()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert [d.n for d in keeper.live()] == [1], "the parent keeps its own"
    keeper.close()


class ForkAware:
    def __init__(self) -> None:
        self.reset = 0

    def after_fork(self) -> None:
        self.reset += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_at_fork_calls_live_objects_in_the_child_only() -> None:
    kept, dropped = ForkAware(), ForkAware()
    forking.at_fork(kept, "after_fork")
    forking.at_fork(dropped, "after_fork")
    del dropped
    gc.collect()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if kept.reset == 1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert kept.reset == 0, "the parent is not reset"


def test_at_fork_holds_objects_weakly() -> None:
    obj = ForkAware()
    forking.at_fork(obj, "after_fork")
    before = len([r for r in forking._callbacks if r() is not None])
    del obj
    gc.collect()
    assert len([r for r in forking._callbacks if r() is not None]) == before - 1
