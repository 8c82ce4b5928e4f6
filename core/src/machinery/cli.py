"""The ``machinery`` command line: run workers, send tasks, read results, inspect and purge queues.

::

    machinery worker  -A myapp:app --concurrency 8 --queue machinery_tasks
    machinery send    -A myapp:app add 1 2 --wait
    machinery result  -A myapp:app task_0d6f... --json
    machinery inspect pending -A myapp:app
    machinery inspect workers -A myapp:app
    machinery inspect task    -A myapp:app task_0d6f...
    machinery purge   -A myapp:app --queue machinery_tasks --yes
    machinery plugins

``-A`` (or the environment variable ``MACHINERY_APP``) names the app as ``module:attribute``
(``module`` alone means ``module:app``; ``path/to/file.py:app`` works too). The module is imported
with the current directory on ``sys.path``.

Exit codes: 0 done; 1 an error (bad ``-A``, unknown scheme, unreachable server, unknown uuid, a
task that ended in FAILURE under ``send --wait``); 2 a usage error; 3 timed out waiting for a
result; 130 a worker stopped by a second signal (running tasks were returned to the queue).
Errors are one line on stderr, never a traceback (``--traceback`` shows it); URLs in them are
redacted.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from . import codec
from .app import Machinery
from .broker import SupportsDepth
from .errors import MachineryError, ResultTimeoutError, UnknownGroupError
from .events import SupportsEvents, TaskEvent, events_store, no_events_text
from .inspection import group_progress, task_history, worker_rows
from .periodic import beat_wanted
from .redact import redact_url
from .signature import Signature, TaskState

__all__ = ["cli", "load_app", "main", "parse_value"]

P = ParamSpec("P")
R = TypeVar("R")

APP_ENV = "MACHINERY_APP"
EXIT_ERROR = 1
EXIT_TIMEOUT = 3
EXIT_ABORTED = 130
LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
SHORT_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


# --------------------------------------------------------------------------------------------------
# errors: one line, redacted, no traceback


class CLIError(click.ClickException):
    """A clear one-line failure (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(_redact_text(message))


class CLITimeoutError(CLIError):
    """Waiting for a result ran out of time (exit 3)."""

    exit_code = EXIT_TIMEOUT


def _redact_text(text: str) -> str:
    """Redact every URL found in free text (defence in depth: messages should already be redacted)."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, MachineryError) and text:
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _want_traceback() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("traceback"))


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn any exception escaping a command into a one-line :class:`CLIError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_ABORTED) from None
        except Exception as exc:
            if _want_traceback():
                raise
            raise CLIError(_describe(exc)) from None

    return wrapper


# --------------------------------------------------------------------------------------------------
# loading the app


def load_app(spec: str | None) -> Machinery:
    """Import ``module:attribute`` (or ``module``, meaning ``module:app``; or ``file.py:app``) with
    the current directory on ``sys.path`` and return the :class:`Machinery` app it names."""
    if not spec:
        raise CLIError(f"no app given: pass -A module:app (or set {APP_ENV}=module:app)")
    module_name, _, attr_path = spec.partition(":")
    attr_path = attr_path or "app"
    if not module_name or not all(part.isidentifier() for part in attr_path.split(".")):
        raise CLIError(f"bad app {spec!r}: expected module:attribute, for example myapp:app")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            module = _import_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except CLIError:
        raise
    except Exception as exc:
        if _want_traceback():
            raise
        missing = exc.name or "" if isinstance(exc, ModuleNotFoundError) else ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CLIError(
                f"cannot load app {spec!r}: no module named {missing!r} "
                f"(looked in the current directory {cwd} and sys.path)"
            ) from None
        raise CLIError(f"cannot load app {spec!r}: {_describe(exc)}") from None
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(
                f"cannot load app {spec!r}: {module_name} has no attribute {attr_path!r}"
            ) from None
    if not isinstance(obj, Machinery):
        raise CLIError(f"bad app {spec!r}: {attr_path} is a {type(obj).__name__}, not a Machinery app")
    return obj


def _import_file(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"cannot load app: no such file {path!r}")
    name = file.stem
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise CLIError(f"cannot load app: {path!r} is not an importable Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def app_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "-A",
        "--app",
        "app_spec",
        envvar=APP_ENV,
        metavar="MODULE:APP",
        help=f"The Machinery app, e.g. myapp:app (env {APP_ENV}).",
    )(fn)


def timeout_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "-t",
        "--timeout",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        default=30.0,
        show_default=True,
        help="Seconds --wait waits.",
    )(fn)


def loglevel_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "-l",
        "--loglevel",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Log level.",
    )(fn)


# --------------------------------------------------------------------------------------------------
# values and output


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``1``, ``1.5``, ``[1,2]``, ``true``,
    ``"1"``), else the text itself (``foo``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str, indent=2))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state_dict(state: TaskState) -> dict[str, Any]:
    return {
        "uuid": state.task_uuid,
        "name": state.task_name,
        "state": state.state.value,
        "result": codec.values_from_results(state.results) if state.is_success else None,
        "results": [{"type": r.type, "value": r.value} for r in state.results or []],
        "error": state.error or None,
        "created_at": _iso(state.created_at),
    }


def _shown(value: Any) -> str:
    """A result for humans: several values comma-separated, each as JSON."""
    if isinstance(value, tuple):
        return ", ".join(_json(v) for v in value)
    return _json(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in [list(headers), *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _clip(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _signature_dict(sig: Signature) -> dict[str, Any]:
    return {
        "uuid": sig.uuid,
        "name": sig.name,
        "queue": sig.routing_key,
        "args": sig.arg_values,
        "kwargs": sig.kwargs,
        "eta": _iso(sig.eta),
        "priority": sig.priority,
        "retry_count": sig.retry_count,
        "group_uuid": sig.group_uuid or None,
    }


def _call_args(sig: Signature) -> str:
    parts = [_json(v) for v in sig.arg_values] + [f"{k}={_json(v)}" for k, v in sig.kwargs.items()]
    return ", ".join(parts)


def _print_state(state: TaskState) -> None:
    fields = [("uuid", state.task_uuid), ("name", state.task_name or "-"), ("state", state.state.value)]
    if state.is_success:
        fields.append(("result", _shown(codec.values_from_results(state.results))))
    elif state.error:
        fields.append(("error", state.error))
    fields.append(("created", _iso(state.created_at) or "-"))
    for key, value in fields:
        click.echo(f"{key:<8} {value}")


# --------------------------------------------------------------------------------------------------
# the commands

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="machinery-core", prog_name="machinery")
@click.option("--traceback", is_flag=True, help="Show the full traceback of an error.")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log more in send/result/inspect/purge: -v warnings (e.g. reconnects), -vv info, -vvv debug.",
)
@click.pass_context
def cli(ctx: click.Context, traceback: bool, verbose: int) -> None:
    """Machinery for Python: a distributed task queue (Go Machinery's model and wire format).

    \b
    Run a worker, send a task and wait for its value:
      machinery worker -A myapp:app --concurrency 8
      machinery send -A myapp:app add 1 2 --wait

    -A names the app (module:attribute) in every command; MACHINERY_APP=myapp:app sets it once.
    Run `machinery COMMAND --help` for each command's options and an example.
    """
    if ctx.invoked_subcommand not in ("worker", "dashboard"):  # they have their own --loglevel
        _quiet_logging(verbose)


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0].startswith("machinery")


def _quiet_logging(verbose: int) -> None:
    """One-shot commands: only the final error line by default; -v shows Machinery's warnings
    (reconnects), -vv its info lines, -vvv everything at debug level, client libraries included."""
    root = logging.getLogger()
    if root.handlers:  # configured by the embedding program (or a test runner): leave it alone
        return
    levels = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(SHORT_LOG_FORMAT))
    if verbose < 3:
        handler.addFilter(_is_ours)
    root.addHandler(handler)
    root.setLevel(levels[min(verbose, 3)])


@cli.command(context_settings=CONTEXT, short_help="Run a worker until SIGTERM or Ctrl-C.")
@app_option
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=0),
    metavar="N",
    default=0,
    show_default=True,
    help="Tasks run at once (threads or processes); 0 = Config.worker.default_concurrency (8).",
)
@click.option(
    "-Q",
    "--queue",
    "queues",
    multiple=True,
    metavar="Q[,Q2]",
    help="Queue(s) to consume (repeat or comma-separate); default Config.default_queue.",
)
@click.option(
    "-n", "--consumer-tag", default="", help="This worker's name in logs (default machinery_worker)."
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["thread", "process"]),
    default="thread",
    show_default=True,
    help="Run tasks in threads, or in forked processes (hard time limits kill the child).",
)
@loglevel_option
@click.option(
    "-B/-b",
    "--beat/--no-beat",
    "with_beat",
    default=None,
    help="Also send the app's periodic tasks (see `machinery beat`). Default: yes when the app has "
    "periodic tasks and a lock shared across processes (each tick is then sent once however many "
    "workers run it).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    metavar="PORT",
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (e.g. 9808; needs machinery-core[metrics]).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics server binds (0.0.0.0: every interface, for a remote Prometheus).",
)
@_friendly
def worker(
    app_spec: str | None,
    concurrency: int,
    queues: tuple[str, ...],
    consumer_tag: str,
    pool: str,
    loglevel: str,
    with_beat: bool | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker: consume tasks and store their results, until SIGTERM or Ctrl-C.

    The first signal stops fetching and lets running tasks finish (Config.worker.shutdown_grace);
    a second one returns them to the queue and quits at once (exit code 130).

    At --loglevel info it logs a banner: broker and backend (redacted), queues, concurrency,
    registered tasks, events and metrics. It sends heartbeats and task events to the result
    backend when it keeps them (see `machinery inspect workers`; Config.events.enabled).

    \b
    Example:
      machinery worker -A myapp:app --concurrency 8 --queue machinery_tasks,emails
      machinery worker -A myapp:app --metrics-port 9808
    """
    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT, stream=sys.stderr)
    log = logging.getLogger("machinery.cli")
    if metrics_port is not None:
        from .metrics import METRICS_EXTRA_HINT, available

        if not available():
            raise CLIError(f"--metrics-port needs prometheus-client: {METRICS_EXTRA_HINT}")
    app = load_app(app_spec)
    queue_list = [q.strip() for item in queues for q in item.split(",") if q.strip()]
    the_worker = app.worker(
        consumer_tag=consumer_tag,
        concurrency=concurrency,
        queue=queue_list or None,
        pool="process" if pool == "process" else "thread",
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    if not app.tasks:
        log.warning("no tasks registered in %s: every message will be requeued for other workers", app_spec)
    beat = app.beat() if beat_wanted(app, with_beat) else None
    if beat is not None:
        beat.start()
    try:
        the_worker.launch()
    finally:
        if beat is not None:
            beat.stop()
    if the_worker.aborted:
        # Task threads are daemons and their messages are back in the queue: leave now.
        raise click.exceptions.Exit(EXIT_ABORTED)


@cli.command(context_settings=CONTEXT, short_help="Send the app's periodic tasks on their schedule.")
@app_option
@loglevel_option
@_friendly
def beat(app_spec: str | None, loglevel: str) -> None:
    """Send the periodic tasks registered with app.register_periodic_* on their cron schedule,
    until SIGTERM or Ctrl-C. Run as many beats as you like: each tick is sent once, through the
    app's lock (Config.lock; by default the result backend's).

    \b
    Example (myapp.py):
      app.register_periodic_task("*/5 * * * *", "report", report.s())
    then:
      machinery beat -A myapp:app
    """
    import signal

    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT, stream=sys.stderr)
    app = load_app(app_spec)
    if not app.periodic:
        raise click.ClickException("no periodic tasks registered: use app.register_periodic_task(...)")
    scheduler = app.beat()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: scheduler.stop())
    scheduler.run()


def _parse_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--kwarg'")
        kwargs[key] = parse_value(raw)
    return kwargs


def _parse_eta(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time (e.g. 2030-01-01T12:00:00Z)", param_hint="'--eta'"
        ) from None
    return value if value.tzinfo is not None else value.astimezone()  # naive = local time


def _wait_state(app: Machinery, uuid: str, timeout: float) -> TaskState:
    from .result import AsyncResult

    try:
        return AsyncResult(app.backend, uuid).wait_state(timeout)
    except ResultTimeoutError as exc:
        raise CLITimeoutError(str(exc)) from None


@cli.command(context_settings=CONTEXT, short_help="Send a task (and optionally wait for its value).")
@app_option
@click.argument("name")
@click.argument("args", nargs=-1)
@click.option(
    "-k", "--kwarg", "kwargs", multiple=True, metavar="KEY=VALUE", help="A keyword argument (repeat)."
)
@click.option("-Q", "--queue", default="", help="Queue to send to (default Config.default_queue).")
@click.option(
    "--countdown",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Run no sooner than SECONDS from now.",
)
@click.option(
    "--eta", default=None, metavar="TIME", help="Run no sooner than this ISO 8601 time (naive = local)."
)
@click.option(
    "--retry-count",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Retries on failure (Fibonacci back-off).",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 255),
    default=0,
    metavar="0-255",
    help="Message priority where the broker has them.",
)
@click.option("-w", "--wait", is_flag=True, help="Wait for the task to finish and print its value.")
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_friendly
def send(
    app_spec: str | None,
    name: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    queue: str,
    countdown: float | None,
    eta: str | None,
    retry_count: int | None,
    priority: int,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Send task NAME with ARGS and print its uuid (with --wait: its state and value).

    Each ARG and --kwarg value is parsed as JSON when it can be (1, 2.5, true, [1,2], {"a":1},
    "\\"quoted\\"") and taken as a string otherwise. Put -- before arguments that start with a dash
    (negative numbers). With --wait the exit code is 1 when the task ended in FAILURE and 3 on timeout.

    \b
    Examples:
      machinery send -A myapp:app add 1 2 --wait
      machinery send -A myapp:app sum_ints '[1, 2]' --countdown 10
      machinery send -A myapp:app greet --kwarg name=Ada --queue emails --json
      machinery send -A myapp:app add -- -1 -2 --wait
    """
    if countdown is not None and eta is not None:
        raise click.UsageError("give --countdown or --eta, not both")
    when: datetime | None = None
    if countdown is not None:
        when = datetime.now(UTC) + timedelta(seconds=countdown)
    elif eta is not None:
        when = _parse_eta(eta)
    app = load_app(app_spec)
    task = app.tasks.get(name)
    sig = Signature(
        name,
        args=[parse_value(a) for a in args],
        kwargs=_parse_kwargs(kwargs),
        routing_key=queue,
        eta=when,
        priority=priority,
        retry_count=retry_count if retry_count is not None else task.options.retry_count if task else 0,
        retry_timeout=task.options.retry_timeout if task else 0,
    )
    if app.tasks and task is None:
        click.echo(f"note: {name!r} is not registered in this app; sending it anyway", err=True)
    result = app.send_task(sig)
    if not wait:
        if as_json:
            _emit_json({"uuid": result.uuid, "name": name, "queue": sig.routing_key, "eta": _iso(sig.eta)})
        else:
            delay = f", not before {_iso(sig.eta)}" if sig.eta else ""
            click.echo(f"sent {name} {result.uuid} to queue {sig.routing_key}{delay}")
        return
    state = _wait_state(app, result.uuid, timeout)
    if as_json:
        _emit_json(_state_dict(state))
    elif state.is_success:
        click.echo(f"{name} {state.task_uuid} SUCCESS {_shown(codec.values_from_results(state.results))}")
    else:
        click.echo(f"{name} {state.task_uuid} {state.state.value} {state.error}")
    if state.is_failure:
        raise click.exceptions.Exit(EXIT_ERROR)


@cli.command(context_settings=CONTEXT, short_help="Show a task's state and value by uuid.")
@app_option
@click.argument("uuid")
@click.option("-w", "--wait", is_flag=True, help="Wait until the task finished (SUCCESS or FAILURE).")
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_friendly
def result(app_spec: str | None, uuid: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Show a task's state and value (or error) by its uuid.

    An unknown uuid (never sent, purged or expired) is an error (exit 1), also with --wait.

    \b
    Examples:
      machinery result -A myapp:app task_0d6f7a4e-...
      machinery result -A myapp:app task_0d6f7a4e-... --wait --timeout 60 --json
    """
    app = load_app(app_spec)
    state = app.backend.get_state(uuid)
    if state is None:
        raise CLIError(f"unknown task uuid {uuid!r} (never sent, purged, or its result expired)")
    if wait and not state.is_completed:
        state = _wait_state(app, uuid, timeout)
    if as_json:
        _emit_json(_state_dict(state))
    else:
        _print_state(state)


@cli.group(
    context_settings=CONTEXT,
    short_help="List workers, pending or delayed tasks; a task's or group's history.",
)
def inspect() -> None:
    """Look at the tasks waiting in the broker, the workers, and what happened to a task or group.

    \b
    Examples:
      machinery inspect pending -A myapp:app --queue machinery_tasks
      machinery inspect delayed -A myapp:app --json
      machinery inspect workers -A myapp:app
      machinery inspect task -A myapp:app TASK_UUID
      machinery inspect group -A myapp:app GROUP_UUID
    """


def _listing(app: Machinery, what: str, fetch: Callable[[], list[Signature]]) -> list[Signature]:
    try:
        return fetch()
    except NotImplementedError:
        raise CLIError(f"the broker {redact_url(app.config.broker)} cannot list {what} tasks") from None


@inspect.command(context_settings=CONTEXT, short_help="List the tasks waiting in a queue.")
@app_option
@click.option("-Q", "--queue", default="", help="Queue to list (default Config.default_queue).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list, oldest first).")
@_friendly
def pending(app_spec: str | None, queue: str, as_json: bool) -> None:
    """List the tasks waiting in a queue, oldest first (Machinery's GetPendingTasks).

    \b
    Example:
      machinery inspect pending -A myapp:app --queue machinery_tasks
    """
    app = load_app(app_spec)
    queue = queue or app.config.default_queue
    sigs = _listing(app, "pending", lambda: app.broker.pending(queue))
    if as_json:
        _emit_json([_signature_dict(s) for s in sigs])
        return
    if not sigs:
        click.echo(f"no pending tasks in queue {queue}")
        return
    _table(
        ["UUID", "NAME", "ARGS", "RETRIES"],
        [[s.uuid, s.name, _clip(_call_args(s)), str(s.retry_count)] for s in sigs],
    )
    click.echo(f"{len(sigs)} pending in queue {queue}")


@inspect.command(context_settings=CONTEXT, short_help="List the tasks waiting for their ETA.")
@app_option
@click.option("-Q", "--queue", default="", help="Only this queue (default: every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list, soonest first).")
@_friendly
def delayed(app_spec: str | None, queue: str, as_json: bool) -> None:
    """List the tasks waiting for their ETA (or a retry back-off), soonest first.

    \b
    Example:
      machinery inspect delayed -A myapp:app
    """
    app = load_app(app_spec)
    sigs = _listing(app, "delayed", app.broker.delayed)
    if queue:
        sigs = [s for s in sigs if s.routing_key == queue]
    if as_json:
        _emit_json([_signature_dict(s) for s in sigs])
        return
    if not sigs:
        click.echo(f"no delayed tasks{f' in queue {queue}' if queue else ''}")
        return
    now = datetime.now(UTC)

    def eta(sig: Signature) -> str:
        if sig.eta is None:
            return "-"
        return f"{_iso(sig.eta)} (in {max(0.0, (sig.eta - now).total_seconds()):.1f}s)"

    _table(
        ["UUID", "NAME", "QUEUE", "ETA", "ARGS"],
        [[s.uuid, s.name, s.routing_key, eta(s), _clip(_call_args(s))] for s in sigs],
    )
    click.echo(f"{len(sigs)} delayed")


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _at(unix: float) -> str:
    return _iso(datetime.fromtimestamp(unix, UTC)) or "-"


def _events_store_of(app: Machinery) -> SupportsEvents:
    store = events_store(app.backend)
    if store is None:
        raise CLIError(no_events_text(app.backend))
    return store


@inspect.command(context_settings=CONTEXT, short_help="List the workers (live and lost).")
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of heartbeats with a status).")
@_friendly
def workers(app_spec: str | None, as_json: bool) -> None:
    """List the workers that sent a heartbeat (Config.worker.heartbeat_interval) to the events
    store; a worker that missed three heartbeats is shown as lost (it died, hangs or lost its
    connection), one that stopped cleanly as stopped. Needs a result backend that keeps events
    (sqlite, memory, redis, mongodb).

    \b
    Example:
      machinery inspect workers -A myapp:app
    """
    app = load_app(app_spec)
    rows = worker_rows(_events_store_of(app).workers())
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo("no workers have sent a heartbeat (or events are off: Config.events.enabled)")
        return
    _table(
        ["WORKER", "STATUS", "QUEUES", "BUSY", "PROCESSED", "FAILED", "LAST BEAT", "UP SINCE", "VERSION"],
        [
            [
                r["worker"],
                r["status"],
                _clip(",".join(r["queues"]), 30),
                f"{r['busy']}/{r['concurrency']}",
                str(r["processed"]),
                str(r["failed"]),
                _ago(r["seen_ago"]),
                _at(r["started_at"]),
                r["version"],
            ]
            for r in rows
        ],
    )
    counts = {status: sum(r["status"] == status for r in rows) for status in ("live", "lost", "stopped")}
    click.echo(", ".join(f"{n} {status}" for status, n in counts.items()))


def _event_dict(event: TaskEvent) -> dict[str, Any]:
    data = event.to_dict()
    data["at"] = _at(event.at)
    return data


@inspect.command(context_settings=CONTEXT, short_help="Show a task's state and its history.")
@app_option
@click.argument("uuid")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {state, events (oldest first)}.")
@_friendly
def task(app_spec: str | None, uuid: str, as_json: bool) -> None:
    """Show a task's current state (from the result backend) and its history: every event the
    workers recorded (received, started, succeeded, failed, retried, dead_lettered), with worker,
    run time and error.

    \b
    Example:
      machinery inspect task -A myapp:app 4f1c...
    """
    app = load_app(app_spec)
    found = task_history(app.backend, uuid)
    if not found.known:
        raise CLIError(f"task {uuid} is unknown to the result backend (never sent, purged or expired)")
    if as_json:
        _emit_json(
            {
                "uuid": uuid,
                "state": _state_dict(found.state) if found.state is not None else None,
                "events": [_event_dict(e) for e in found.events] if found.events_kept else None,
            }
        )
        return
    if found.state is not None:
        _print_state(found.state)
    else:
        click.echo(f"uuid     {uuid}\nstate    - (no state stored: expired, or the backend keeps none)")
    click.echo("")
    if not found.events_kept:
        click.echo(f"no history: {no_events_text(app.backend)}")
        return
    if not found.events:
        click.echo("no events recorded (events off, or expired)")
        return
    trace = next((e.trace_id for e in found.events if e.trace_id), None)
    _table(
        ["AT", "EVENT", "WORKER", "QUEUE", "RUNTIME", "ERROR"],
        [
            [
                _at(e.at),
                e.kind,
                e.worker,
                e.queue,
                f"{e.runtime:.3f}s" if e.runtime is not None else "",
                _clip(e.error or "", 60),
            ]
            for e in found.events
        ],
    )
    if trace:
        click.echo(f"trace id {trace}")


@inspect.command(context_settings=CONTEXT, short_help="Show a group's or chord's progress.")
@app_option
@click.argument("uuid")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: counts, chord_triggered and members.")
@_friendly
def group(app_spec: str | None, uuid: str, as_json: bool) -> None:
    """Show a group's (or chord's) progress: members done out of total, how many succeeded or
    failed, whether the chord callback was triggered, and each member's state.

    \b
    Example:
      machinery inspect group -A myapp:app group_4f1c...
    """
    app = load_app(app_spec)
    try:
        progress = group_progress(app.backend, uuid)
    except UnknownGroupError as exc:
        raise CLIError(str(exc)) from None
    if as_json:
        _emit_json(
            {
                "group_uuid": uuid,
                "total": progress.total,
                "done": progress.done,
                "succeeded": progress.succeeded,
                "failed": progress.failed,
                "chord_triggered": progress.chord_triggered,
                "members": [_state_dict(s) for s in progress.members],
            }
        )
        return
    triggered = {True: "yes", False: "no", None: "unknown (the backend cannot tell)"}[
        progress.chord_triggered
    ]
    click.echo(
        f"group {uuid}: {progress.done}/{progress.total} done "
        f"({progress.succeeded} succeeded, {progress.failed} failed); chord triggered: {triggered}"
    )
    _table(
        ["UUID", "NAME", "STATE", "ERROR"],
        [
            [s.task_uuid, s.task_name or "-", s.state.value, _clip(s.error or "", 60)]
            for s in progress.members
        ],
    )


@cli.command(context_settings=CONTEXT, short_help="Delete every task waiting in a queue.")
@app_option
@click.option("-Q", "--queue", required=True, help="The queue to empty.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@_friendly
def purge(app_spec: str | None, queue: str, yes: bool) -> None:
    """Delete every task waiting in a queue (running tasks are not touched).

    \b
    Example:
      machinery purge -A myapp:app --queue machinery_tasks --yes
    """
    app = load_app(app_spec)
    count = _queue_depth(app, queue)
    what = f"the {count} waiting tasks" if count is not None else "every waiting task"
    if not yes:
        click.confirm(
            f"Delete {what} of queue {queue!r} on {redact_url(app.config.broker)}?", abort=True, err=True
        )
    _purge_with_progress(app, queue, count)
    click.echo(f"purged queue {queue}" + (f": {count} tasks deleted" if count is not None else ""))


def _queue_depth(app: Machinery, queue: str) -> int | None:
    """Messages waiting in ``queue``: counted by the broker where it can (``depth``), else listed."""
    broker = app.broker
    if isinstance(broker, SupportsDepth):
        return broker.depth(queue)
    try:
        return len(broker.pending(queue))
    except NotImplementedError:
        return None


#: seconds between progress updates of a long purge
PURGE_PROGRESS_EVERY = 0.5


def _purge_with_progress(app: Machinery, queue: str, count: int | None) -> None:
    """Purge in a thread; while it runs, show how many messages are gone (a bar on a terminal, a
    line every few seconds otherwise) when the broker can count, or that it is still working."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            app.broker.purge(queue)
        except BaseException as exc:  # re-raised below, in the command's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="machinery-purge", daemon=True).start()
    if done.wait(PURGE_PROGRESS_EVERY * 2):  # most purges are quick: no progress output at all
        _raise_first(failure)
        return
    countable = count is not None and count > 0 and isinstance(app.broker, SupportsDepth)
    started = time.monotonic()
    if countable and sys.stderr.isatty():
        assert count is not None
        with click.progressbar(length=count, label=f"purging {queue}", file=sys.stderr) as bar:
            while not done.wait(PURGE_PROGRESS_EVERY):
                bar.update(count - _remaining(app, queue, count) - bar.pos)
            bar.update(count - bar.pos)
    else:
        last = 0.0
        while not done.wait(PURGE_PROGRESS_EVERY):
            if time.monotonic() - last >= 5 * PURGE_PROGRESS_EVERY:
                last = time.monotonic()
                gone = (
                    f"{count - _remaining(app, queue, count)}/{count} deleted, "
                    if countable and count
                    else ""
                )
                click.echo(f"purging {queue}: {gone}{time.monotonic() - started:.0f}s", err=True)
    _raise_first(failure)


def _remaining(app: Machinery, queue: str, count: int) -> int:
    try:
        depth = app.broker.depth(queue) if isinstance(app.broker, SupportsDepth) else None
    except Exception:  # a count is only progress: never fail the purge over it
        depth = None
    return count if depth is None else min(count, max(0, depth))


def _raise_first(failure: list[BaseException]) -> None:
    if failure:
        raise failure[0]


@cli.command(context_settings=CONTEXT, short_help="List installed transports (URL schemes).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {scheme, kind, distribution}.")
@_friendly
def plugins(as_json: bool) -> None:
    """List the installed transports: URL scheme, what it provides, which package.

    \b
    Example:
      machinery plugins
    """
    from .plugins import FIRST_PARTY, list_schemes

    rows = list_schemes()
    if as_json:
        _emit_json([{"scheme": r.scheme, "kind": r.kind, "distribution": r.distribution} for r in rows])
        return
    grouped: dict[tuple[str, str], list[str]] = {}
    order = {"broker": 0, "backend": 1, "lock": 2}
    for row in rows:
        grouped.setdefault((row.scheme, row.distribution), []).append(row.kind)
    _table(
        ["SCHEME", "PROVIDES", "DISTRIBUTION"],
        [
            [f"{scheme}://", ", ".join(sorted(kinds, key=lambda k: order.get(k, 9))), dist]
            for (scheme, dist), kinds in sorted(grouped.items())
        ],
    )
    installed = {r.distribution for r in rows}
    missing: dict[str, list[str]] = {}
    for scheme, dist in FIRST_PARTY.items():
        if dist not in installed:
            missing.setdefault(dist, []).append(f"{scheme}.*" if "://" in scheme else f"{scheme}://")
    if missing:
        click.echo("\nfirst-party transports not installed:")
        width = max(len(d) for d in missing)
        for dist, schemes in sorted(missing.items()):
            click.echo(f"  pip install {dist.ljust(width)}  # {', '.join(schemes)}")


def _add_dashboard() -> None:
    from .dashboard.command import dashboard  # uses the helpers above; imports no web framework

    cli.add_command(dashboard)


_add_dashboard()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script ``machinery`` (and ``python -m machinery``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="machinery")
    raise SystemExit(0)  # pragma: no cover - click exits itself in standalone mode
