"""``machinery dashboard``: the click command (the web parts load only when it runs)."""

from __future__ import annotations

import logging
import sys

import click

from ..cli import CONTEXT, LOG_FORMAT, CLIError, _friendly, app_option, load_app, loglevel_option

__all__ = ["TOKEN_ENV", "dashboard"]

TOKEN_ENV = "MACHINERY_DASHBOARD_TOKEN"


@click.command(context_settings=CONTEXT, short_help="Serve the web dashboard (workers, queues, tasks).")
@app_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=5555, show_default=True, help="Port.")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    metavar="TOKEN",
    help=f"Enables the actions (re-send, purge), which need it; required beyond localhost, where every "
    f"page needs it (env {TOKEN_ENV}; prefer the variable: a command line is visible to other users).",
)
@click.option(
    "--trace-url",
    default=None,
    metavar="URL",
    help="Link a task's trace id to this URL, e.g. 'http://jaeger:16686/trace/{trace_id}'.",
)
@loglevel_option
@_friendly
def dashboard(
    app_spec: str | None, host: str, port: int, token: str | None, trace_url: str | None, loglevel: str
) -> None:
    """Serve the web dashboard: workers (live and lost), queues with pending and delayed counts, recent
    tasks, a page per task, dead letters. Pages update live.

    It listens on 127.0.0.1 by default. Actions (re-send a failed task or a dead letter, purge a queue)
    exist only with a token, which each action then needs. On any other address every page needs the
    token too, and the dashboard does not start without one. Worker heartbeats and task events come
    from the result backend's events store (sqlite://, memory://, redis://, mongodb://); arguments are
    shown only when the workers record them (Config.events.record_args).

    \b
    Examples:
      machinery dashboard -A myapp:app
      MACHINERY_DASHBOARD_TOKEN=s3cret machinery dashboard -A myapp:app --host 0.0.0.0 --port 8080
    """
    try:
        from .server import TokenRequiredError, serve, settings_for
    except ImportError as exc:
        raise CLIError(
            f"the dashboard needs its extra: pip install 'machinery-core[dashboard]' ({exc})"
        ) from None
    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        settings_for(host, token, trace_url)  # refuse before loading the app
    except (TokenRequiredError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    serve(load_app(app_spec), host=host, port=port, token=token, trace_url=trace_url, log_level=loglevel)
