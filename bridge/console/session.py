"""Who may use the console: an API key, entered once, becomes a signed session cookie.

The cookie holds an expiry and an HMAC of it under the key (never the key itself), so every replica
with the same keys accepts it and a removed key ends its sessions. It is HttpOnly, SameSite=Strict,
limited to ``/ui``, and Secure behind HTTPS. Every request that changes something must come from the
console's own origin (``Origin``, else ``Referer``). Without configured keys the console is open, as
the API is.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from ..settings import Settings

COOKIE = "lora_bridge_session"
SESSION_S = 12 * 3600
PREFIX = "/ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _signature(key: str, expires: int) -> str:
    return hmac.new(key.encode(), f"lora-bridge-console:{expires}".encode(), hashlib.sha256).hexdigest()


def session_value(key: str, now: float | None = None) -> str:
    """The cookie value for a session opened with ``key``."""
    expires = int((time.time() if now is None else now) + SESSION_S)
    return f"{expires}.{_signature(key, expires)}"


def valid_session(settings: Settings, value: str | None, now: float | None = None) -> bool:
    """Whether ``value`` is an unexpired session signed by one of the configured keys."""
    if not value or "." not in value:
        return False
    expires_text, signature = value.split(".", 1)
    if not expires_text.isdigit() or int(expires_text) < (time.time() if now is None else now):
        return False
    return any(hmac.compare_digest(signature, _signature(key, int(expires_text))) for key in settings.api_keys)


def key_matches(settings: Settings, given: str) -> bool:
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys)


def signed_in(request: web.Request, settings: Settings) -> bool:
    return not settings.api_keys or valid_session(settings, request.cookies.get(COOKIE))


def _forwarded(request: web.Request, header: str) -> str | None:
    """The first value of a proxy's ``X-Forwarded-*`` header (a browser cannot set these on a
    cross-site request, so they are safe to trust for the origin check)."""
    value = request.headers.get(header)
    return (value.split(",")[0].strip() or None) if value else None


def own_origin(request: web.Request) -> str:
    """The console's origin as the browser sees it, also behind a proxy that terminates TLS."""
    scheme = _forwarded(request, "X-Forwarded-Proto") or request.scheme
    return f"{scheme}://{_forwarded(request, 'X-Forwarded-Host') or request.host}"


def same_origin(request: web.Request) -> bool:
    """Whether a request that changes something comes from this console's own pages."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == own_origin(request)


def open_session(response: web.StreamResponse, request: web.Request, key: str) -> None:
    response.set_cookie(COOKIE, session_value(key), max_age=SESSION_S, path=PREFIX, httponly=True, samesite="Strict",
                        secure=own_origin(request).startswith("https://"))


def close_session(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=PREFIX)


Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def see_other(location: str) -> web.Response:
    """A redirect answered (not raised: the service's error middleware answers raised HTTP errors as JSON)."""
    return web.Response(status=303, headers={"Location": location})


def guarded(settings: Settings, page: Page, login_url: str) -> Page:
    """``page`` for a signed-in user from the console's own origin; the login page (or 401 for a partial
    update, 403 for a foreign write) otherwise."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method not in SAFE_METHODS and not same_origin(request):
            return web.Response(status=403, text="refused: this change does not come from the console's own pages")
        if not signed_in(request, settings):
            if request.headers.get("HX-Request") or request.method not in SAFE_METHODS:
                return web.Response(status=401, text="signed out: sign in again", headers={"HX-Redirect": login_url})
            return see_other(f"{login_url}?{urlencode({'next': request.rel_url.path})}")
        return await page(request)

    return handler
