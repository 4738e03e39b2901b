"""Run ComfyUI's own Python modules inside this process, with folders set up.

For the benchmarks that time node code directly (one ComfyUI process, no HTTP in the measured
path) and for tests that look inside node state; call it in a process of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .install import comfyui_dir


def import_comfyui(loras_dir: Path, device: str = "cpu", extra_args: Sequence[str] = ()) -> None:
    """Make ``import comfy``/``nodes``/``folder_paths`` work, on ``device`` ("cpu" or "cuda"), with
    ComfyUI's command-line options ``extra_args``."""
    root = str(comfyui_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    sys.argv = [sys.argv[0]] + (["--cpu"] if device == "cpu" else []) + list(extra_args)
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(loras_dir), is_default=True)
