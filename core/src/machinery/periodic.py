"""Periodic tasks: cron specs fired **once per tick** across any number of processes.

Machinery's ``RegisterPeriodicTask/Group/Chord/Chain`` as ``app.register_periodic_*``; every
process running a :class:`Beat` for the same app competes for a lock named after the entry and
the tick's time, so exactly one sends. Unlike Go Machinery the lock key does not contain the
program name (#621), and entries can be removed with ``unregister_periodic``.

Needs ``croniter`` (``pip install 'machinery-core[cron]'``). Specs: 5 fields (m h dom mon dow),
``@hourly``-style descriptors, evaluated in UTC unless ``tz`` is given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .log import logger
from .redact import redact_url
from .signature import Signature
from .workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from .app import Machinery

__all__ = ["Beat", "PeriodicEntry", "Schedule"]


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("periodic tasks need croniter: pip install 'machinery-core[cron]'") from None
    return croniter


class Schedule:
    """A cron spec; ``next_after(t)`` is the first tick strictly after ``t``."""

    def __init__(self, spec: str, tz: tzinfo = UTC) -> None:
        croniter = _croniter()
        if not croniter.is_valid(spec):
            raise ConfigError(f"invalid cron spec {spec!r}: use 5 fields 'm h dom mon dow' or @hourly etc.")
        self.spec = spec
        self.tz = tz
        self._croniter = croniter

    def next_after(self, moment: datetime) -> datetime:
        following: datetime = self._croniter(self.spec, moment.astimezone(self.tz)).get_next(datetime)
        return following.astimezone(UTC)


@dataclass
class PeriodicEntry:
    """One registered periodic job: ``send(app)`` sends a fresh copy of its work."""

    name: str
    schedule: Schedule
    send: Callable[[Machinery], object]


def task_sender(signature: Signature) -> Callable[[Machinery], object]:
    def send(app: Machinery) -> object:
        return app.send_task(signature.copy())

    return send


def group_sender(signatures: Sequence[Signature], concurrency: int) -> Callable[[Machinery], object]:
    def send(app: Machinery) -> object:
        return app.send_group(Group(s.copy() for s in signatures), concurrency)

    return send


def chord_sender(
    signatures: Sequence[Signature], callback: Signature, concurrency: int
) -> Callable[[Machinery], object]:
    def send(app: Machinery) -> object:
        return app.send_chord(Chord(Group(s.copy() for s in signatures), callback.copy()), concurrency)

    return send


def chain_sender(signatures: Sequence[Signature]) -> Callable[[Machinery], object]:
    def send(app: Machinery) -> object:
        return app.send_chain(Chain(s.copy() for s in signatures))

    return send


class Beat:
    """Fires the app's periodic entries. Run one per process (or several: each tick is sent once).

    ``start()`` runs it in a daemon thread, ``run()`` blocks, ``stop()`` ends either.
    """

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="machinery-beat", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def run(self) -> None:
        logger.info("beat: %d periodic entries", len(self.app.periodic))
        self._warn_if_lock_is_process_local()
        due: dict[str, datetime] = {}
        while not self._stop.is_set():
            now = datetime.now(UTC)
            entries = dict(self.app.periodic)  # registrations may change while we run
            for name in list(due):
                if name not in entries:
                    del due[name]
            for name, entry in entries.items():
                tick = due.setdefault(name, entry.schedule.next_after(now))
                if tick <= now:
                    self._fire(entry, tick)
                    due[name] = entry.schedule.next_after(now)
            wake = min(due.values(), default=now.replace(microsecond=0)) if due else None
            delay = 1.0 if wake is None else max(0.0, (wake - datetime.now(UTC)).total_seconds())
            self._stop.wait(min(delay, 1.0))

    def _warn_if_lock_is_process_local(self) -> None:
        """No configured URL offers a lock: each process has its own, so every beat sends every tick."""
        self.app.lock  # noqa: B018 - resolve it now (no I/O), not at the first tick
        if self.app.periodic and self.app.lock_is_fallback:
            config = self.app.config
            logger.warning(
                "beat: neither the broker (%s) nor the result backend (%s) offers a lock, so periodic "
                "tasks use an in-process lock: every process running a beat sends every tick. Set "
                "Config.lock (env LOCK, YAML 'lock') to a URL with a lock (redis://, sqlite://) "
                "if more than one process runs periodic tasks.",
                redact_url(config.broker),
                redact_url(config.result_backend),
            )

    def _fire(self, entry: PeriodicEntry, tick: datetime) -> None:
        key = f"machinery_periodic:{entry.name}:{tick.isoformat()}"
        following = entry.schedule.next_after(tick)
        ttl = max(1.0, (following - tick).total_seconds())
        try:
            if not self.app.lock.acquire(key, ttl):
                logger.debug("beat: %s tick %s sent by another process", entry.name, tick)
                return
            entry.send(self.app)
            logger.info("beat: sent %s for tick %s", entry.name, tick.isoformat())
        except Exception:
            logger.exception("beat: could not send periodic entry %s", entry.name)
