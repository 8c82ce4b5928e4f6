"""Who may see the pages and who may act.

- Actions (POST) need the token in the form field ``token`` or the header ``X-Machinery-Token``: a
  cookie alone never authorises one, so another site cannot make a logged-in browser act (CSRF). A
  request whose ``Origin`` is another site is refused too.
- Pages need a token only when the dashboard listens beyond the loopback interface: the header
  (``Authorization: Bearer T`` or ``X-Machinery-Token``), or the session cookie that ``/login`` sets
  (HttpOnly, SameSite=Strict; it holds a digest of the token, not the token).
- Every response forbids framing and foreign scripts (Content-Security-Policy).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SESSION_COOKIE", "TOKEN_HEADER", "PageGuard", "action_allowed", "same_token", "session_value"]

SESSION_COOKIE = "machinery_dashboard"
TOKEN_HEADER = "x-machinery-token"
#: reachable without a token even where pages need one
OPEN_PATHS = ("/login", "/static/")
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def same_token(given: str | None, token: str) -> bool:
    """Constant-time comparison."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def session_value(token: str) -> str:
    """What the session cookie holds: a digest of the token (the cookie never carries the token)."""
    return hmac.new(token.encode(), b"machinery dashboard session", hashlib.sha256).hexdigest()


def header_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer T`` or ``X-Machinery-Token: T``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get(TOKEN_HEADER)


def page_allowed(request: Request, token: str) -> bool:
    if same_token(header_token(request.headers), token):
        return True
    return same_token(request.cookies.get(SESSION_COOKIE), session_value(token))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from a page of another site (a reverse proxy may
    rewrite Host: the host it was asked for, X-Forwarded-Host, counts too)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")} - {""}
    return urlsplit(origin).netloc in hosts


def action_allowed(request: Request, form_token: str | None, token: str) -> bool:
    """The token came with the request itself (form field or header), from this site."""
    given = form_token or header_token(request.headers)
    return same_origin(request) and same_token(given, token)


class PageGuard:
    """ASGI middleware: the security headers everywhere; with ``token``, no page without it."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        request = Request(scope)
        path = request.url.path
        if (
            self.token is not None
            and not path.startswith(OPEN_PATHS)
            and not page_allowed(request, self.token)
        ):
            await self._refuse(request)(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    @staticmethod
    def _refuse(request: Request) -> Response:
        if request.method == "GET" and "x-dashboard-partial" not in request.headers:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return PlainTextResponse("a token is required (this dashboard listens beyond localhost)", 401)
