"""LoRA stack presets saved on the pod: the rows of an Apply LoRA Stack under a name, for any stack node.

Each is ``<ComfyUI's user directory>/lora_bridge_presets/<name>.json`` holding ``{"loras": [...]}``: the rows
as the editor gave them (checked as the stack's own JSON, ``bridge/pack_protocol.py``), written atomically (a
hidden temporary name, then a rename).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..bridge.pack_protocol import PresetBody, ProtocolError, StackEntry, parse_payload

log = logging.getLogger("lora_bridge")
FOLDER = "lora_bridge_presets"
_lock = threading.Lock()  # one writer at a time: a save and a delete of one name never interleave


def presets_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_user_directory()) / FOLDER


def _rows(entries: list[StackEntry]) -> list[dict[str, Any]]:
    """The rows as given: the fields each set, nothing filled in."""
    return [entry.model_dump(exclude_unset=True, exclude_none=True) for entry in entries]


def _report(path: Path, entries: list[StackEntry]) -> dict[str, Any]:
    return {"name": path.stem, "loras": _rows(entries), "updated": path.stat().st_mtime}


def list_presets() -> list[dict[str, Any]]:
    """Every readable preset, by name; a file that is not a stack is left out (and logged)."""
    folder = presets_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(_report(path, parse_payload(PresetBody, path.read_bytes()).loras))
        except (OSError, ProtocolError) as exc:
            log.warning("lora_bridge: preset %s is unreadable, left out: %s", path.name, exc)
    return found


def save_preset(name: str, entries: list[StackEntry]) -> dict[str, Any]:
    """Write (or replace) the preset ``name`` (already checked against ``PresetName``)."""
    folder = presets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / f"{name}.json", folder / f".{name}.json.partial"
    with _lock:
        tmp.write_text(json.dumps({"loras": _rows(entries)}, indent=1))
        os.replace(tmp, path)
        return _report(path, entries)


def delete_preset(name: str) -> bool:
    """Remove the preset ``name``; whether there was one."""
    with _lock:
        try:
            (presets_dir() / f"{name}.json").unlink()
        except FileNotFoundError:
            return False
    return True
