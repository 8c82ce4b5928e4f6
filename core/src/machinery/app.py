"""The ``Machinery`` app: task registry, producer API and the factory for workers."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from . import periodic, plugins, signing, tracing
from .builtin import go_word
from .config import Config
from .errors import NotRegisteredError, PluginNotFoundError
from .periodic import PeriodicEntry
from .redact import redact_url
from .result import AsyncResult, ChainResult, ChordResult, GroupResult
from .signature import Signature, State, TaskState, new_uuids, now_utc
from .task import Task, TaskOptions
from .transports.null import NoResultBackendError, NullBackend
from .workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from .backend import Backend
    from .broker import Broker
    from .lock import Lock
    from .worker import Worker

__all__ = ["Machinery"]

log = logging.getLogger("machinery")
P = ParamSpec("P")
R = TypeVar("R")
PrePublishHandler = Callable[[Signature], None]


class Machinery:
    """A Machinery server: config, the registered tasks, and the broker, backend and lock.

    URLs are resolved to plugins here (an unknown scheme fails at once, naming the package to
    install); connections open lazily on first use. Ready-made objects may be passed instead, like
    Go Machinery v2's ``NewServer(cnf, broker, backend, lock)``.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        backend: Backend | None = None,
        lock: Lock | None = None,
    ) -> None:
        self.config = config or Config()
        if go_word(self.config.broker) == "eager":
            self.config.eager = True  # Go's eager broker: the same as Config.eager
        if self.config.eager:
            broker = broker or plugins.resolve_broker("memory://", self.config)
            # in memory, unless a Go word (eager, null) names the backend
            in_process = self.config.result_backend if go_word(self.config.result_backend) else "memory://"
            backend = backend or plugins.resolve_backend(in_process, self.config)
        self.broker: Broker = broker or plugins.resolve_broker(self.config.broker, self.config)
        self.backend: Backend = backend or plugins.resolve_backend(self.config.result_backend, self.config)
        self._lock = lock
        #: True when no configured URL offered a lock and ``lock`` fell back to an in-process one
        self.lock_is_fallback = False
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._pre_publish: PrePublishHandler | None = None
        self._eager_runner: Any = None
        #: periodic entries by name (see :mod:`machinery.periodic`)
        self.periodic: dict[str, PeriodicEntry] = {}
        self.scheduler_watch = periodic.SchedulerWatch(self.periodic)
        weakref.finalize(self, self.scheduler_watch.check)

    # registry --------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        retry_count: int = 0,
        retry_timeout: int = 0,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # options are spelled out in the overload above
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None, **options: Any
    ) -> Any:
        """Register a function as a task, under its own name or ``name``.

        ``@app.task`` or ``@app.task(name="sum_ints", time_limit=30)``; see :class:`TaskOptions`.
        """

        def register(func: Callable[P, R]) -> Task[P, R]:
            return self.register_task(name or func.__name__, func, **options)

        return register(fn) if fn is not None else register

    def register_task(self, name: str, fn: Callable[P, R], **options: Any) -> Task[P, R]:
        """Register ``fn`` under ``name`` (Machinery's ``RegisterTask``)."""
        if not callable(fn):
            raise TypeError(f"task {name!r} must be callable, got {type(fn).__name__}")
        task = fn if isinstance(fn, Task) else Task(self, name, fn, TaskOptions(**options))
        self.tasks[name] = task
        return task

    def register_tasks(self, tasks: Mapping[str, Callable[..., Any]]) -> None:
        """Register several tasks at once (Machinery's ``RegisterTasks``)."""
        for name, fn in tasks.items():
            self.register_task(name, fn)

    def is_registered(self, name: str) -> bool:
        return name in self.tasks

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegisteredError(f"task {name!r} is not registered") from None

    # lazily built pieces ---------------------------------------------------------------------
    @property
    def lock(self) -> Lock:
        """The lock used by periodic tasks: ``Config.lock``, else the backend's or broker's URL
        when a plugin offers a lock for it, else an in-process lock."""
        if self._lock is None:
            candidates = [self.config.lock] if self.config.lock else []
            candidates += [self.config.result_backend, self.config.broker, "memory://"]
            for url in candidates:
                try:
                    self._lock = plugins.resolve_lock(url, self.config)
                    self.lock_is_fallback = url not in (self.config.result_backend, self.config.broker)
                    break
                except PluginNotFoundError:
                    if url == self.config.lock:
                        raise
        assert self._lock is not None
        return self._lock

    def set_pre_publish_handler(self, handler: PrePublishHandler | None) -> None:
        """Call ``handler(signature)`` before each task is published (after PENDING is stored)."""
        self._pre_publish = handler

    # sending ---------------------------------------------------------------------------------
    def _prepare(self, sig: Signature) -> Signature:
        sig.ensure_uuid()
        if not sig.routing_key:
            sig.routing_key = self.config.default_queue
        return sig

    @staticmethod
    def _pending(sig: Signature, created_at: datetime | None = None) -> TaskState:
        return TaskState(sig.uuid, State.PENDING, task_name=sig.name, created_at=created_at or now_utc())

    def send_task(self, signature: Signature) -> AsyncResult:
        """Store PENDING, then publish (Machinery's ``SendTask``)."""
        sig = self._prepare(signature)
        self._send([sig])
        return AsyncResult(self.backend, sig.uuid, sig.name)

    def send_tasks(self, signatures: Sequence[Signature]) -> list[AsyncResult]:
        """Send several tasks with one state write and one publish round trip where possible."""
        fresh = iter(new_uuids(sum(1 for s in signatures if not s.uuid)))
        for sig in signatures:
            if not sig.uuid:
                sig.uuid = next(fresh)
        sigs = [self._prepare(s) for s in signatures]
        self._send(sigs)
        return [AsyncResult(self.backend, s.uuid, s.name) for s in sigs]

    def _send(self, sigs: list[Signature], concurrency: int = 0) -> None:
        """Store every PENDING state, then publish: in one round trip when a plugin's
        ``machinery_publish_with_states`` hook can do so for this broker and backend (e.g. both on one
        Redis server)."""
        created_at = now_utc()  # one creation time per send: encoded once (codec.format_time)
        states = [self._pending(s, created_at) for s in sigs]
        if tracing.active():
            for sig in sigs:
                with tracing.publish_span(sig):
                    pass  # the span marks the hand-over; its context rides in the headers
        signing.sign_messages(self.config, sigs)  # after tracing: its headers are covered too
        if self._pre_publish is None and not self.config.eager and concurrency <= 0:
            hook = plugins.get_plugin_manager().hook.machinery_publish_with_states
            if plugins.first_result(
                hook, broker=self.broker, backend=self.backend, signatures=sigs, states=states
            ):
                return
        if len(states) == 1:
            self.backend.set_state(states[0])
        else:
            self.backend.set_states(states)
        self._publish(sigs, concurrency)

    def _publish(self, sigs: list[Signature], concurrency: int = 0) -> None:
        if self._pre_publish is not None:
            for sig in sigs:
                self._pre_publish(sig)
            signing.sign_messages(self.config, sigs)  # again: the handler may have changed them
        if self.config.eager:
            for sig in sigs:
                self._run_eagerly(sig)
        elif concurrency <= 0 or len(sigs) == 1:
            if len(sigs) == 1:
                self.broker.publish(sigs[0])
            else:
                self.broker.publish_many(sigs)
        else:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="machinery-send") as pool:
                list(pool.map(self.broker.publish, sigs))

    def send_group(self, group: Group | Iterable[Signature], concurrency: int = 0) -> GroupResult:
        """Record the group, store PENDING for every member, then publish them with at most
        ``concurrency`` publishes in flight (0 = all at once)."""
        group = group if isinstance(group, Group) else Group(group)
        with tracing.workflow_span("group", group.group_uuid, len(group.signatures)):
            sigs = [self._prepare(s) for s in group.signatures]
            self.backend.init_group(group.group_uuid, [s.uuid for s in sigs])
            self._send(sigs, concurrency)
        return GroupResult([AsyncResult(self.backend, s.uuid, s.name) for s in sigs], group.group_uuid)

    def send_chord(self, chord: Chord, concurrency: int = 0) -> ChordResult:
        """Send the chord's group; the callback is sent by the worker that finishes it last."""
        with tracing.workflow_span("chord", chord.group.group_uuid, len(chord.group.signatures)):
            group_result = self.send_group(chord.group, concurrency)
        return ChordResult(self.backend, group_result, chord.callback.uuid, chord.callback.name)

    def send_chain(self, chain: Chain | Iterable[Signature]) -> ChainResult:
        """Send the first task; the rest travel nested in its ``on_success``."""
        chain = chain if isinstance(chain, Chain) else Chain(chain)
        if isinstance(self.backend, NullBackend):
            raise NoResultBackendError(
                "chains need stored results: Config.result_backend is 'null' (Go's discard-everything "
                "backend): set a real one"
            )
        with tracing.workflow_span("chain", "", len(chain.signatures)):
            self.send_task(chain.signatures[0])
        links = [AsyncResult(self.backend, s.uuid, s.name) for s in chain.signatures]
        return ChainResult(self.backend, links)

    def _run_eagerly(self, sig: Signature) -> None:
        from . import codec
        from .worker.runner import TaskRunner

        if self._eager_runner is None:
            self._eager_runner = TaskRunner(self)
        self._eager_runner.run(codec.decode_signature(codec.encode_signature(sig)))

    # periodic tasks (Machinery's RegisterPeriodic*) ------------------------------------------------
    def register_periodic_task(self, spec: str, name: str, signature: Signature) -> None:
        """Send a copy of ``signature`` on every tick of the cron ``spec``, once across processes."""
        self._register_periodic(name, spec, periodic.task_sender(signature))

    def register_periodic_group(
        self, spec: str, name: str, signatures: Sequence[Signature], concurrency: int = 0
    ) -> None:
        """Send a new group of copies of ``signatures`` on every tick."""
        self._register_periodic(name, spec, periodic.group_sender(signatures, concurrency))

    def register_periodic_chord(
        self, spec: str, name: str, signatures: Sequence[Signature], callback: Signature, concurrency: int = 0
    ) -> None:
        """Send a new chord on every tick."""
        self._register_periodic(name, spec, periodic.chord_sender(signatures, callback, concurrency))

    def register_periodic_chain(self, spec: str, name: str, signatures: Sequence[Signature]) -> None:
        """Send a new chain on every tick."""
        self._register_periodic(name, spec, periodic.chain_sender(signatures))

    def unregister_periodic(self, name: str) -> bool:
        """Remove a periodic entry; True if it existed (Go Machinery has no way to do this, #621)."""
        return self.periodic.pop(name, None) is not None

    def _register_periodic(self, name: str, spec: str, send: Callable[[Machinery], object]) -> None:
        schedule = periodic.Schedule(spec, periodic.zone(self.config.timezone))
        self.periodic[name] = periodic.PeriodicEntry(name, schedule, send)

    def beat(self) -> periodic.Beat:
        """A scheduler for the periodic entries: ``app.beat().start()`` or ``.run()``."""
        return periodic.Beat(self)

    # workers ---------------------------------------------------------------------------------
    def worker(
        self,
        consumer_tag: str = "",
        concurrency: int = 0,
        queue: str | Sequence[str] | None = None,
        pool: Literal["thread", "process"] = "thread",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> Worker:
        """A worker consuming ``queue`` (default: ``Config.default_queue``; a list or a
        comma-separated string for several). ``concurrency`` 0 means
        ``Config.worker.default_concurrency``. ``metrics_port``: serve Prometheus ``/metrics`` there
        while it runs (0: any free port; needs ``machinery-core[metrics]``)."""
        from .worker import Worker

        return Worker(
            self,
            consumer_tag=consumer_tag,
            concurrency=concurrency,
            queue=queue,
            pool=pool,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )

    def close(self) -> None:
        """Close the broker, backend and lock connections."""
        self.scheduler_watch.check()
        self.broker.close()
        self.backend.close()
        if self._lock is not None:
            self._lock.close()

    def __repr__(self) -> str:
        return (
            f"<Machinery broker={redact_url(self.config.broker)} "
            f"backend={redact_url(self.config.result_backend)} tasks={len(self.tasks)}>"
        )
