"""Periodic tasks fire once per tick across several beats, and can be unregistered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from machinery import Config, ConfigError, Machinery
from machinery.periodic import Schedule, beat_wanted
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
        app.register_periodic_task("@every 1s", "every-second", tick.s())
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


# --- Go Machinery's cron dialect (robfig/cron v3 ParseStandard), with the examples of its docs -------

UTC_NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        # "Every hour on the half hour"
        ("30 * * * *", UTC_NOON, datetime(2026, 3, 2, 12, 30, tzinfo=UTC)),
        # "On the half hour of 3-6am, 8-11pm"
        ("30 3-6,20-23 * * *", UTC_NOON, datetime(2026, 3, 2, 20, 30, tzinfo=UTC)),
        # "Runs at 04:30 Tokyo time every day" (19:30 UTC the day before)
        ("CRON_TZ=Asia/Tokyo 30 04 * * *", UTC_NOON, datetime(2026, 3, 2, 19, 30, tzinfo=UTC)),
        ("TZ=Asia/Tokyo 30 04 * * *", UTC_NOON, datetime(2026, 3, 2, 19, 30, tzinfo=UTC)),
        # "6am in Tokyo, every day", with ? for day-of-week
        ("CRON_TZ=Asia/Tokyo 0 6 * * ?", UTC_NOON, datetime(2026, 3, 2, 21, 0, tzinfo=UTC)),
        ("0 9 * * MON-FRI", UTC_NOON, datetime(2026, 3, 3, 9, 0, tzinfo=UTC)),
        ("@hourly", UTC_NOON, datetime(2026, 3, 2, 13, 0, tzinfo=UTC)),
        ("@daily", UTC_NOON, datetime(2026, 3, 3, tzinfo=UTC)),
        ("@midnight", UTC_NOON, datetime(2026, 3, 3, tzinfo=UTC)),
        ("@weekly", UTC_NOON, datetime(2026, 3, 8, tzinfo=UTC)),
        ("@monthly", UTC_NOON, datetime(2026, 4, 1, tzinfo=UTC)),
        ("@yearly", UTC_NOON, datetime(2027, 1, 1, tzinfo=UTC)),
        ("@annually", UTC_NOON, datetime(2027, 1, 1, tzinfo=UTC)),
        # "@every 1h30m": aligned to the epoch here (a day is 16 ticks of 90 min: 12:00, then 13:30)
        ("@every 1h30m", UTC_NOON, datetime(2026, 3, 2, 13, 30, tzinfo=UTC)),
        ("@every 90s", UTC_NOON, datetime(2026, 3, 2, 12, 1, 30, tzinfo=UTC)),
        ("@every 1.5h", UTC_NOON, datetime(2026, 3, 2, 13, 30, tzinfo=UTC)),
        ("@every 500ms", UTC_NOON, datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC)),  # rounds up to 1 s, as Go
    ],
)
def test_go_cron_dialect(spec: str, after: datetime, expected: datetime) -> None:
    assert Schedule(spec).next_after(after) == expected


def test_config_timezone_applies_to_specs_without_a_prefix(memory_url: str) -> None:
    app = Machinery(Config(broker=memory_url, result_backend=memory_url, timezone="America/New_York"))

    @app.task
    def noop() -> None:
        return None

    app.register_periodic_task("0 9 * * *", "nine", noop.s())
    app.register_periodic_task("CRON_TZ=UTC 0 9 * * *", "nine-utc", noop.s())
    assert app.periodic["nine"].schedule.next_after(UTC_NOON) == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    assert app.periodic["nine-utc"].schedule.next_after(UTC_NOON) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    with pytest.raises(ConfigError, match="timezone"):
        Config(timezone="Mars/Olympus_Mons").validate()


def test_every_ticks_are_the_same_in_every_process() -> None:
    """Epoch-aligned: two schedules made at different moments agree on every tick (one lock key)."""
    first, later = Schedule("@every 7m"), Schedule("@every 7m")
    moment = datetime(2026, 3, 2, 12, 3, 17, tzinfo=UTC)
    assert first.next_after(moment) == later.next_after(moment + timedelta(seconds=1))
    tick = first.next_after(moment)
    assert (tick - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() % 420 == 0


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("0 30 * * * *", "5 fields"),  # robfig's WithSeconds form: not what Go Machinery parses
        ("@every", "invalid duration"),
        ("@every 1 hour", "invalid duration"),
        ("@every 0s", "positive duration"),
        ("CRON_TZ=Nowhere/Land 0 6 * * *", "unknown time zone"),
        ("@fortnightly", "invalid cron spec"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Schedule(spec)


# --- who runs the schedule ---------------------------------------------------------------------------


def _app_with_entry(tmp_path: Path, lock: str) -> Machinery:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    app = Machinery(Config(broker=db, result_backend=db, lock=lock))

    @app.task
    def noop() -> None:
        return None

    app.register_periodic_task("@every 1m", "minutely", noop.s())
    return app


def test_worker_runs_the_schedule_by_default_only_with_a_shared_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = _app_with_entry(tmp_path, f"sqlite:///{tmp_path / 'lock.db'}")
    assert beat_wanted(shared, None) is True
    assert beat_wanted(shared, False) is False
    assert "--no-beat" in caplog.text
    caplog.clear()
    local = _app_with_entry(tmp_path, "memory://")
    assert beat_wanted(local, None) is False, "a process-local lock must never give N copies of each tick"
    assert "process-local" in caplog.text and "Config.lock" in caplog.text
    assert beat_wanted(local, True) is True
    nothing = Machinery(Config(broker="memory://", result_backend="memory://"))
    assert beat_wanted(nothing, None) is False
    for app in (shared, local, nothing):
        app.close()


def test_registering_entries_without_any_scheduler_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app_with_entry(tmp_path, "memory://")
    app.close()
    assert app.scheduler_watch.reported and "no scheduler ran here" in caplog.text
    caplog.clear()
    app.close()  # once: apps collected by other tests may log their own, so count on this one
    assert "no scheduler ran here" not in caplog.text
    scheduled = _app_with_entry(tmp_path, "memory://")
    beat = scheduled.beat()
    beat.stop()
    beat.run()  # marks the schedule as run here, then returns at once (stopped)
    scheduled.close()
    assert scheduled.scheduler_watch.started and not scheduled.scheduler_watch.reported


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
