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


def _beat_warnings(app: Machinery, caplog: pytest.LogCaptureFixture) -> list[str]:
    @app.task
    def noop() -> None:
        return None

    app.register_periodic_task("*/5 * * * *", "five", noop.s())
    caplog.clear()
    with caplog.at_level("WARNING"):
        beat = app.beat()
        beat.start()
        beat.stop()
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_a_process_local_lock_fallback_is_one_clear_warning(caplog: pytest.LogCaptureFixture) -> None:
    from machinery.transports.memory.backend import MemoryBackend
    from machinery.transports.memory.broker import MemoryBroker

    # URLs no installed plugin offers a lock for (objects given directly, as an app embedding its own)
    config = Config(broker="nolock://user:secret@host", result_backend="nolock://host")
    app = Machinery(config, broker=MemoryBroker(config), backend=MemoryBackend(config))
    [warning] = _beat_warnings(app, caplog)
    assert "Config.lock" in warning and "every tick" in warning
    assert "secret" not in warning, "URLs in the warning are redacted"
    assert app.lock_is_fallback


def test_no_warning_when_a_configured_url_offers_a_lock(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = Machinery(Config(broker=memory_url, result_backend=memory_url))
    assert _beat_warnings(app, caplog) == []
    assert not app.lock_is_fallback
