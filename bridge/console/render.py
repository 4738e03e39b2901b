"""Server-side rendering of the console's pages: one jinja2 environment (autoescaped) and its filters."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from .session import PREFIX

TEMPLATES = Path(__file__).parent / "templates"
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)


def size(n: int | None) -> str:
    """Bytes in words (``1.5 MB``)."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def when(t: float | None) -> str:
    """A timestamp as UTC date and time, or a dash."""
    if t is None:
        return "—"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


ENV.filters.update(size=size, when=when, duration=duration)
ENV.globals.update(prefix=PREFIX)


def render(template: str, status: int = 200, **context: Any) -> web.Response:
    """``template`` rendered with ``context`` as an HTML answer."""
    html = ENV.get_template(template).render(**context)
    return web.Response(text=html, status=status, content_type="text/html")
