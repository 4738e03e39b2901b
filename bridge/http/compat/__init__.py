"""Seed-compatible routes: the request shapes and routes the teams' product documents define
(``../shared/seeds``), under ``/compat``, mapped onto the same registry, jobs and pods as ``/v1``.

- ``brand_images.py``: seed 002, the brand image service (``/compat/generate``, ``/compat/lora/…``);
- ``video.py``: seed 000, the video backend (``/compat/video/…``, WebSocket progress);
- ``studio.py``: seed 004, the character studio (``/compat/studio/…``, the trainer's webhook).

Each request is parsed as strictly as the native API (closed models, the seeds' ranges) and
translated into a ``GenerationCreate``; nothing here runs a job its own way.
"""

from __future__ import annotations

from ...openapi import RouteSpec
from ..routing import Handler
from . import brand_images, studio, video
from .brand_images import PRELOADED, start_preload, stop_preload
from .common import PREFIX

ROUTES: list[tuple[RouteSpec, Handler]] = [*brand_images.ROUTES, *video.ROUTES, *studio.ROUTES]

__all__ = ["PREFIX", "PRELOADED", "ROUTES", "start_preload", "stop_preload"]
