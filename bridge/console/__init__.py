"""The console: the bridge's face in the browser at ``/ui`` (same process, same API keys, every replica).

Server-rendered pages (jinja2, ``templates/``) with htmx (vendored, ``static/``) for the parts that update
in place; nothing is fetched from the internet and nothing is built. Pages: the LoRA library
(``library.py``), jobs and trainings (``activity.py``), pods and their caches (``fleet_view.py``); who may
see them is ``session.py``'s. Every change is made through the same job-core calls as the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import LoraBridgeError
from ..http.errors import classify
from ..settings import Settings
from . import activity, fleet_view, library
from .render import render
from .session import PREFIX, close_session, guarded, key_matches, open_session, same_origin, see_other, signed_in

STATIC = Path(__file__).parent / "static"
LOGIN = f"{PREFIX}/login"


def _next_page(value: str | None) -> str:
    """Where to go after signing in: a console page, never another site."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/loras"


def _login(settings: Settings) -> Any:
    async def login(request: web.Request) -> web.StreamResponse:
        next_page = _next_page(request.query.get("next"))
        if request.method == "GET":
            if signed_in(request, settings):
                return see_other(next_page)
            return render("login.html", next_page=next_page, message=None)
        if not same_origin(request):
            return web.Response(status=403, text="refused: sign in from the console's own page")
        form = await request.post()
        key, next_page = str(form.get("key", "")).strip(), _next_page(str(form.get("next", "")))
        if not settings.api_keys:
            return see_other(next_page)
        if not key or not key_matches(settings, key):
            return render("login.html", status=401, next_page=next_page,
                          message="That key is not one of this bridge's API keys.")
        response = see_other(next_page)
        open_session(response, request, key)
        return response

    return login


async def logout(request: web.Request) -> web.StreamResponse:
    if not same_origin(request):
        return web.Response(status=403, text="refused: sign out from the console's own page")
    response = see_other(LOGIN)
    close_session(response)
    return response


def _in_words(page: Any) -> Any:
    """A page whose refusals (an unknown id, a malformed one) are shown in words, as HTML."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await page(request)
        except LoraBridgeError as exc:
            status, _ = classify(exc)
            template = "_problem.html" if request.headers.get("HX-Request") else "problem.html"
            return render(template, status=status, message=str(exc))

    return handler


async def home(request: web.Request) -> web.StreamResponse:
    return see_other(f"{PREFIX}/loras")


def setup(app: web.Application, settings: Settings) -> None:
    """Add the console's routes to the service ``app`` (its job-core parts set already)."""
    pages = [("GET", "", home), ("GET", "/", home), *library.setup(app, settings.preview_params), *activity.routes(),
             *fleet_view.routes()]
    for method, path, page in pages:
        app.router.add_route(method, PREFIX + path, guarded(settings, _in_words(page), LOGIN))
    login = _login(settings)
    app.router.add_route("GET", LOGIN, login)
    app.router.add_route("POST", LOGIN, login)
    app.router.add_route("POST", f"{PREFIX}/logout", logout)
    app.router.add_static(f"{PREFIX}/static", STATIC, append_version=False)
