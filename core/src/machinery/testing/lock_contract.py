"""``LockContract``: one holder at a time, expiry, owner-only release."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import ClassVar

import pytest

from ..capabilities import Capability
from ..lock import Lock
from ._base import ContractBase, requires
from ._util import Child, eventually, unique

__all__ = ["LockContract"]


class LockContract(ContractBase):
    """Subclass with a ``lock_url`` fixture (or override ``make_lock``). Each Lock object is one owner."""

    lock_racers: ClassVar[int] = 8
    lock_keys: ClassVar[int] = 30

    @pytest.fixture
    def lock(self) -> Lock:
        lock: Lock = self._maybe_new("lock")
        return lock

    def test_lock_acquire_release(self, lock: Lock) -> None:
        key = unique("lock")
        other = self.new_lock()
        assert lock.acquire(key, 10) is True
        assert lock.acquire(key, 10) is False, "a held key was taken again"
        assert other.acquire(key, 10) is False, "a held key was taken by another owner"
        lock.release(key)
        assert other.acquire(key, 10) is True, "a released key could not be taken"
        other.release(key)

    def test_lock_one_holder_among_racers(self) -> None:
        keys = [unique("lock") for _ in range(self.lock_keys)]
        locks = [self.new_lock() for _ in range(self.lock_racers)]
        wins: Counter[str] = Counter()
        errors: list[BaseException] = []
        mutex = threading.Lock()
        start = threading.Barrier(len(locks))

        def race(lk: Lock) -> None:
            try:
                start.wait(30)
                for key in keys:
                    if lk.acquire(key, 30):
                        with mutex:
                            wins[key] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(lk,)) for lk in locks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.t(60))
        assert not errors, f"acquire raised: {errors[:3]!r}"
        assert all(wins[k] == 1 for k in keys), f"holders per key: {sorted(Counter(wins.values()).items())}"

    @requires(Capability.MULTI_PROCESS, of="lock")
    def test_lock_race_processes(self) -> None:
        url = self.need_url("lock")
        keys = [unique("lock") for _ in range(self.lock_keys)]
        children = [
            Child(
                "machinery.testing.procs",
                {
                    "cmd": "lock-race",
                    "url": url,
                    "config": self.config,
                    "keys": keys,
                    "threads": 4,
                    "ttl": 30,
                    "plugin_modules": list(self.plugin_modules),
                },
                self.workdir,
                f"lock-race-{i}",
            )
            for i in range(2)
        ]
        for child in children:
            self.closing(child.close)
        for child in children:
            child.expect("ready", self.t(30))
        for child in children:
            child.send("go")
        wins: Counter[str] = Counter()
        for child in children:
            result = child.expect_json("result", self.t(60))
            assert not result["errors"], f"{child.name}: acquire raised: {result['errors'][:3]}"
            wins.update(result["won"])
        assert all(wins[k] == 1 for k in keys), f"holders per key: {sorted(Counter(wins.values()).items())}"

    def test_lock_expiry_frees_it(self, lock: Lock) -> None:
        key = unique("lock")
        other = self.new_lock()
        assert lock.acquire(key, 1.0)
        taken = time.monotonic()
        assert not other.acquire(key, 10)
        eventually(lambda: other.acquire(key, 10), self.t(5), "an expired lock to be free again")
        elapsed = time.monotonic() - taken
        assert elapsed >= 0.95, f"a lock taken for 1 s was free after {elapsed:.2f}s"
        lock.release(key)  # no longer the owner: must not free the new holder's lock
        assert not self.new_lock().acquire(key, 10), "release by the expired owner freed the new holder"

    def test_lock_release_by_non_owner_does_nothing(self, lock: Lock) -> None:
        key = unique("lock")
        other, third = self.new_lock(), self.new_lock()
        assert lock.acquire(key, 10)
        other.release(key)
        assert not other.acquire(key, 10), "release by a non-owner freed the lock"
        assert not third.acquire(key, 10)
        other.release(unique("never-held"))
        lock.release(key)
        assert third.acquire(key, 10)

    def test_lock_close_is_idempotent(self) -> None:
        unused = self.new_lock()
        unused.close()
        unused.close()
        used = self.new_lock()
        key = unique("lock")
        used.acquire(key, 1)
        used.release(key)
        used.close()
        used.close()
