"""Periodic tasks fire once per tick across several beats, and can be unregistered."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from machinery import Config, ConfigError, Machinery
from machinery.task import current_signature

pytest.importorskip("croniter", reason="the [cron] extra is not installed")


def test_each_tick_is_sent_once_across_beats(memory_url: str) -> None:
    apps = [
        Machinery(Config(broker=memory_url, result_backend=memory_url, lock=memory_url)) for _ in range(3)
    ]
    ticks: Counter[str] = Counter()
    enough = threading.Event()

    @apps[0].task
    def tick() -> None:
        sig = current_signature()
        assert sig is not None
        ticks[sig.uuid] += 1
        if len(ticks) >= 3:
            enough.set()

    sends: Counter[int] = Counter()
    for app in apps:
        app.set_pre_publish_handler(lambda sig: sends.update([int(time.time())]))
        app.register_periodic_task("* * * * * *", "every-second", tick.s())  # 6th field: seconds
    beats = [app.beat() for app in apps]
    for beat in beats:
        beat.start()
    worker = apps[0].worker(concurrency=2)
    thread = worker.launch_async()
    try:
        assert enough.wait(10), f"only {len(ticks)} ticks ran"
    finally:
        for beat in beats:
            beat.stop()
        worker.quit()
        thread.join(5)
    assert all(count == 1 for count in ticks.values()), ticks
    assert all(count == 1 for count in sends.values()), f"a tick was sent more than once: {sends}"


def test_unregister_and_bad_spec(app: Machinery) -> None:
    @app.task
    def noop() -> None:
        return None

    app.register_periodic_task("*/5 * * * *", "five", noop.s())
    assert "five" in app.periodic
    assert app.unregister_periodic("five") is True
    assert app.unregister_periodic("five") is False
    with pytest.raises(ConfigError, match="invalid cron spec"):
        app.register_periodic_task("every tuesday", "bad", noop.s())
