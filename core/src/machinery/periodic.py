"""Periodic tasks: cron specs fired **once per tick** across any number of processes.

Machinery's ``RegisterPeriodicTask/Group/Chord/Chain`` as ``app.register_periodic_*``; every
process running a :class:`Beat` for the same app competes for a lock named after the entry and
the tick's time, so exactly one sends. Unlike Go Machinery the lock key does not contain the
program name (#621), and entries can be removed with ``unregister_periodic``.

Specs are Go Machinery's (robfig/cron v3 ``ParseStandard``):

- 5 fields ``m h dom mon dow`` (``?`` as ``*``, names like ``MON-FRI``), parsed by ``croniter``
  (``pip install 'machinery-core[cron]'``);
- the descriptors ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
  ``@hourly``;
- ``@every <Go duration>`` (``@every 1h30m``, ``@every 90s``; under a second rounds up to one, as in Go).
  Unlike Go, ticks are aligned to the Unix epoch, not to process start, so every process computes the
  same ticks and the per-tick lock key matches across processes;
- a ``CRON_TZ=<zone>`` (or ``TZ=<zone>``) prefix: the zone the fields are read in. Without one,
  ``Config.timezone`` (``UTC`` by default; Go uses the machine's local time).

A mixed Go/Python fleet cannot share one schedule: Go's lock key contains the program's binary name
(``machinery_lock_<argv0><name><spec>``, #621) and stores a different value, so Go and Python (and two
different Go binaries) never see each other's locks. Run a schedule on one side only.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .capabilities import Capability
from .errors import ConfigError
from .log import logger
from .redact import redact_url
from .signature import Signature
from .workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from .app import Machinery

__all__ = ["Beat", "PeriodicEntry", "Schedule", "SchedulerWatch", "beat_wanted", "shared_lock"]


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("periodic tasks need croniter: pip install 'machinery-core[cron]'") from None
    return croniter


_TZ_PREFIX = re.compile(r"(?:CRON_TZ|TZ)=(\S+)\s+(.+)", re.DOTALL)
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def zone(name: str) -> tzinfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Berlin``; ``UTC``/``Local``); ConfigError otherwise."""
    if name in ("UTC", "utc", "Z"):
        return UTC
    if name == "Local":
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC"
        ) from None


def go_duration(text: str) -> float:
    """Seconds in a Go duration string (``1h30m``, ``90s``, ``1.5h``, ``250ms``)."""
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match[1]) * _GO_UNITS[match[2]]
        pos = match.end()
    if not text or pos != len(text):
        raise ConfigError(f"invalid duration {text!r}: use Go's form, e.g. 90s, 1h30m or 1.5h")
    return total


class Schedule:
    """A spec in Go Machinery's cron dialect (module docs); ``next_after(t)`` is the first tick
    strictly after ``t``. ``tz`` is the zone of specs without a ``CRON_TZ=`` prefix."""

    def __init__(self, spec: str, tz: tzinfo = UTC) -> None:
        self.spec = spec
        text = spec.strip()
        prefix = _TZ_PREFIX.fullmatch(text)
        if prefix:
            tz, text = zone(prefix[1]), prefix[2].strip()
        self.tz = tz
        self.every: float | None = None
        if text.startswith("@every"):
            seconds = go_duration(text.removeprefix("@every").strip())
            if seconds <= 0:
                raise ConfigError(f"invalid cron spec {spec!r}: @every needs a positive duration")
            self.every = float(max(1, math.ceil(seconds)))  # Go: under a second rounds up, fractions go
            return
        croniter = _croniter()
        if not croniter.is_valid(text) or len(text.split()) not in (1, 5):
            raise ConfigError(
                f"invalid cron spec {spec!r}: use 5 fields 'm h dom mon dow', @hourly etc., or @every 1h30m"
            )
        self._text = text
        self._croniter = croniter

    def next_after(self, moment: datetime) -> datetime:
        if self.every is not None:
            elapsed = (moment.astimezone(UTC) - _EPOCH).total_seconds()
            ticks = math.floor(elapsed / self.every) + 1
            return _EPOCH + timedelta(seconds=ticks * self.every)
        following: datetime = self._croniter(self._text, moment.astimezone(self.tz)).get_next(datetime)
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


def shared_lock(app: Machinery) -> bool:
    """True when the app's lock works across processes (so several beats still send each tick once)."""
    return Capability.MULTI_PROCESS in frozenset(getattr(app.lock, "capabilities", frozenset()))


def beat_wanted(app: Machinery, requested: bool | None) -> bool:
    """Whether a worker runs the app's schedule: ``requested`` (``--beat``/``--no-beat``) when given;
    by default when the app has periodic entries and a lock shared across processes. Says why once
    when entries exist but no schedule runs here."""
    if not app.periodic:
        return bool(requested)
    if requested is None:
        requested = shared_lock(app)
        if not requested:
            logger.warning(
                "%d periodic entries are registered, but the lock is process-local (%s): every worker would "
                "send every tick, so this one does not run the schedule. Set Config.lock to a shared store "
                "(sqlite://, redis://...) or start exactly one worker with --beat (or run `machinery beat`)",
                len(app.periodic),
                type(app.lock).__name__,
            )
    elif not requested:
        logger.warning(
            "%d periodic entries are registered but --no-beat is set: run `machinery beat` (or a worker "
            "with --beat) somewhere, or they are never sent",
            len(app.periodic),
        )
    return requested


class SchedulerWatch:
    """Tells, once, when a process registered periodic entries but never ran a scheduler for them
    (checked when the app is closed or garbage-collected, e.g. at exit)."""

    def __init__(self, entries: dict[str, PeriodicEntry]) -> None:
        self.entries = entries
        self.started = False
        self.reported = False

    def check(self) -> None:
        if self.entries and not self.started and not self.reported:
            self.reported = True
            logger.warning(
                "%d periodic entries were registered in this process but no scheduler ran here: start "
                "`machinery beat`, a worker (it runs the schedule when the lock is shared), or app.beat()",
                len(self.entries),
            )


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
        self.app.scheduler_watch.started = True
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
