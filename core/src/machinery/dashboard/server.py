"""Serving the dashboard with uvicorn, and the rule about where it may listen.

On the loopback interface (the default, 127.0.0.1) the pages are open to whoever can reach them on
this machine, and actions need the token. On any other address every page needs the token too, and
the dashboard refuses to start without one.
"""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from ..app import Machinery
from ..redact import redact_url
from .web import DashboardSettings, create_app

__all__ = ["TokenRequiredError", "is_loopback", "serve", "settings_for"]

log = logging.getLogger("machinery.dashboard")


class TokenRequiredError(ValueError):
    """Listening beyond localhost without a token."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def settings_for(
    host: str, token: str | None, trace_url: str | None = None, refresh: float = 2.0
) -> DashboardSettings:
    """The settings for listening on ``host``; :class:`TokenRequiredError` for a non-loopback ``host``
    without ``token``."""
    token = token or None
    local = is_loopback(host)
    if not local and token is None:
        raise TokenRequiredError(
            f"the dashboard would listen on {host}, beyond localhost: give a token (--token or "
            "MACHINERY_DASHBOARD_TOKEN); every page will then need it"
        )
    return DashboardSettings(token=token, pages_need_token=not local, trace_url=trace_url, refresh=refresh)


def serve(
    app: Machinery,
    host: str = "127.0.0.1",
    port: int = 5555,
    token: str | None = None,
    trace_url: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the dashboard of ``app`` until Ctrl-C / SIGTERM."""
    settings = settings_for(host, token, trace_url)
    log.info(
        "dashboard of broker %s, results %s on http://%s:%d (pages %s, actions %s)",
        redact_url(app.config.broker),
        redact_url(app.config.result_backend),
        host,
        port,
        "need the token" if settings.pages_need_token else "open on localhost",
        "on (token)" if settings.token else "off (no token)",
    )
    uvicorn.run(create_app(app, settings), host=host, port=port, log_level=log_level, server_header=False)
