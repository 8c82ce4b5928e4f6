"""The dashboard's Starlette application: server-rendered pages (Jinja2) and the token-guarded actions.

Each page renders in full on a plain GET; its live part (``<div id="live">``) is fetched again every
:attr:`DashboardSettings.refresh` seconds by ``static/dashboard.js`` with the header
``X-Dashboard-Partial: 1``, which renders that part alone.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..app import Machinery
from ..broker import SupportsDeadLetters
from ..events import SupportsEvents, events_store, no_events_text
from ..inspection import worker_rows
from ..redact import redact_url
from . import actions, model
from .auth import SESSION_COOKIE, PageGuard, action_allowed, same_token, session_value

__all__ = ["DashboardSettings", "create_app"]

log = logging.getLogger("machinery.dashboard")
HERE = Path(__file__).parent
PARTIAL_HEADER = "x-dashboard-partial"
#: seconds queue counts are reused (listing a deep queue is not free; several tabs poll)
QUEUE_CACHE_SECONDS = 3.0


@dataclass(frozen=True)
class DashboardSettings:
    """How the dashboard behaves.

    ``token`` enables the actions (absent without one); ``pages_need_token`` guards every page too
    (set when listening beyond localhost). ``trace_url`` turns a trace id into a link: a URL with
    ``{trace_id}``, e.g. ``http://jaeger:16686/trace/{trace_id}``.
    """

    token: str | None = None
    pages_need_token: bool = False
    trace_url: str | None = None
    refresh: float = 2.0

    def __post_init__(self) -> None:
        if self.pages_need_token and not self.token:
            raise ValueError("pages_need_token needs a token")
        if self.trace_url is not None:
            check_trace_url(self.trace_url)


def check_trace_url(template: str) -> None:
    """A trace URL template is http(s) and holds ``{trace_id}``; ValueError says what is wrong."""
    if "{trace_id}" not in template:
        raise ValueError(f"the trace URL {template!r} has no {{trace_id}} placeholder")
    if not template.startswith(("http://", "https://")):
        raise ValueError(f"the trace URL {template!r} is not an http:// or https:// URL")


class _QueueCache:
    """Queue counts, reused for :data:`QUEUE_CACHE_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._key: tuple[str, ...] = ()
        self._rows: list[model.QueueRow] = []

    def rows(self, app: Machinery, queues: list[str]) -> list[model.QueueRow]:
        key = tuple(queues)
        with self._lock:
            if key == self._key and time.monotonic() - self._at < QUEUE_CACHE_SECONDS:
                return self._rows
        rows = model.queue_rows(app, queues)
        with self._lock:
            self._key, self._rows, self._at = key, rows, time.monotonic()
        return rows

    def forget(self) -> None:
        with self._lock:
            self._at = 0.0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


class Dashboard:
    """The pages and actions of one Machinery app."""

    def __init__(self, app: Machinery, settings: DashboardSettings) -> None:
        self.app = app
        self.settings = settings
        self.store: SupportsEvents | None = events_store(app.backend)
        self.queues = _QueueCache()
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            auto_reload=False,  # templates ship with the package: no stat() per render
        )
        self.env.filters.update(when=_when, ago=_ago, seconds=_seconds, redact=model.redact_text)
        self.env.globals.update(trace_link=self.trace_link, quote=lambda s: quote(s, safe=""))

    @property
    def record_args(self) -> bool:
        return self.app.config.events.record_args

    def trace_link(self, trace_id: str) -> Markup:
        """A link to the trace when a URL template is set, else the plain id."""
        template = self.settings.trace_url
        if template is None:
            return Markup("<code>{}</code>").format(trace_id)
        href = redact_url(template.replace("{trace_id}", quote(trace_id, safe="")))  # no credentials in pages
        return Markup('<a class="trace" href="{}" rel="noreferrer">{}</a>').format(href, trace_id)

    # rendering -------------------------------------------------------------------------------
    def render(self, request: Request, page: str, status: int = 200, **context: Any) -> HTMLResponse:
        """``page``.html in full, or only its live part (``_page``.html) for the refresh script."""
        context.update(
            request=request,
            actions=self.settings.token is not None,
            refresh=self.settings.refresh,
            backend=redact_url(self.app.config.result_backend),
            broker=redact_url(self.app.config.broker),
            no_events=None if self.store is not None else no_events_text(self.app.backend),
        )
        partial = PARTIAL_HEADER in request.headers and (HERE / "templates" / f"_{page}.html").exists()
        name = f"_{page}.html" if partial else f"{page}.html"
        return HTMLResponse(self.env.get_template(name).render(context), status_code=status)

    def message(self, request: Request, text: str, status: int = 200, back: str = "/") -> HTMLResponse:
        return self.render(request, "message", status, text=text, back=back)

    def failed(self, request: Request, exc: Exception) -> HTMLResponse:
        """A broker or backend that failed (down, refused): a 503 page saying which error, redacted."""
        text = model.redact_text(f"the broker or the result backend failed: {type(exc).__name__}: {exc}")
        log.warning("dashboard: %s %s: %s", request.method, request.url.path, text)
        log.debug("dashboard: the failure's traceback", exc_info=exc)
        return self.message(request, text, 503, _local_path(request.url.path))

    def answering(self, page: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """``page``, with a failing broker or backend shown as :meth:`failed` instead of a bare 500."""

        @functools.wraps(page)
        def answer(request: Request) -> Response:
            try:
                return page(request)
            except Exception as exc:
                return self.failed(request, exc)

        return answer

    # pages -----------------------------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        store = self.store
        queues = model.known_queues(self.app, store)
        return self.render(
            request,
            "overview",
            workers=worker_rows(store.workers()) if store is not None else [],
            queues=self.queues.rows(self.app, queues),
            tasks=model.recent_tasks(store, 1, per_page=20) if store is not None else None,
            dead_letters=isinstance(self.app.broker, SupportsDeadLetters),
        )

    def tasks(self, request: Request) -> Response:
        page = _int(request.query_params.get("page"), 1)
        state = request.query_params.get("state", "")
        if state and state not in model.STATE_AFTER.values():
            return self.message(request, f"unknown state {state!r}", 400)
        listing = model.recent_tasks(self.store, page, state=state) if self.store is not None else None
        return self.render(request, "tasks", tasks=listing, state=state, states=model.STATE_AFTER.values())

    def task(self, request: Request) -> Response:
        uuid = request.path_params["uuid"]
        detail = model.task_detail(self.app, uuid, self.record_args)
        return self.render(
            request, "task", 200 if detail.known else 404, task=detail, record_args=self.record_args
        )

    def find(self, request: Request) -> Response:
        uuid = request.query_params.get("uuid", "").strip()
        if not uuid:
            return RedirectResponse("/tasks", status_code=303)
        return RedirectResponse(f"/tasks/{quote(uuid, safe='')}", status_code=303)

    def dead_letters(self, request: Request) -> Response:
        queues = model.known_queues(self.app, self.store)
        rows = model.dead_letter_rows(self.app, queues, self.record_args)
        return self.render(request, "dead_letters", rows=rows, record_args=self.record_args)

    async def login(self, request: Request) -> Response:
        token = self.settings.token
        next_url = _local_path(request.query_params.get("next", "/"))
        if request.method == "GET" or token is None:
            return self.render(request, "login", next_url=next_url, wrong=False)
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not same_token(given, token):
            return self.render(request, "login", 403, next_url=next_url, wrong=True)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # actions ---------------------------------------------------------------------------------
    async def act(self, request: Request) -> Response:
        """POST /actions/NAME: check the token, run the action, say what happened."""
        token = self.settings.token
        if token is None:  # the routes are not even mounted; defence in depth
            return self.message(request, "actions are off: the dashboard was started without a token", 404)
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        back = _local_path(values.get("next", "/"))
        if not action_allowed(request, values.get("token"), token):
            return self.message(request, "refused: the token is missing or wrong", 403, back)
        name = request.path_params["name"]
        try:
            if name == "resend-task":
                text = actions.resend_task(self.app, self.store, values.get("uuid", ""))
            elif name == "resend-dead-letter":
                text = actions.resend_dead_letter(self.app, values.get("queue", ""), values.get("uuid", ""))
            elif name == "purge":
                text = actions.purge_queue(self.app, values.get("queue", ""))
                self.queues.forget()
            else:
                return self.message(request, f"no action {name!r}", 404, back)
        except actions.ActionError as exc:
            return self.message(request, str(exc), 409, back)
        except Exception as exc:
            return self.failed(request, exc)
        return self.message(request, text, 200, back)


def _int(text: str | None, default: int) -> int:
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        return default


def _local_path(target: str) -> str:
    """``target`` when it is a path of this site, else ``/`` (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def create_app(app: Machinery, settings: DashboardSettings | None = None) -> Starlette:
    """The dashboard of ``app`` as an ASGI application (serve it with uvicorn)."""
    settings = settings or DashboardSettings()
    dash = Dashboard(app, settings)
    routes = [
        Route("/", dash.answering(dash.overview)),
        Route("/tasks", dash.answering(dash.tasks)),
        Route("/tasks/{uuid}", dash.answering(dash.task)),
        Route("/find", dash.find),
        Route("/dead-letters", dash.answering(dash.dead_letters)),
        Route("/login", dash.login, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if settings.token is not None:
        routes.append(Route("/actions/{name}", dash.act, methods=["POST"]))
    guard_token = settings.token if settings.pages_need_token else None
    web = Starlette(routes=routes, middleware=[Middleware(PageGuard, token=guard_token)])
    web.state.dashboard = dash
    return web
