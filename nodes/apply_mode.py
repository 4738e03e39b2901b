"""The ``auto`` apply mode of Apply LoRA Stack: merged weights when the pod renders the same LoRAs again,
run-time terms (hot-swap) when they change, decided on the pod from what each stack node applied last.

A repeat is the same node (its id in the graph) with the same stack (sources, hashes, strengths, on/off,
in order). The first time a stack is seen it is hot-swapped: switching costs no re-patching. The next time
it is merged (ComfyUI's own weight patching, once), and as long as it repeats the node's output is
ComfyUI's cached one: the merged model, with no term paid per step. ``fingerprint`` is what ComfyUI
compares between prompts (``IS_CHANGED``), so the node runs again exactly when the decision changes.
"""

from __future__ import annotations

import hashlib
import threading

from ..bridge.pack_protocol import encode_stack, parse_stack

_lock = threading.Lock()
_last: dict[str, str] = {}  # node id -> the stack it applied last (its digest)


def _digest(loras: str) -> str:
    return hashlib.sha256(encode_stack(parse_stack(loras)).encode()).hexdigest()


def fingerprint(node_id: str, loras: str) -> str:
    """The mode ``choose`` would pick now (ComfyUI re-runs the node when it differs from the last prompt's)."""
    with _lock:
        return "merge" if _last.get(node_id) == _digest(loras) else "hotswap"


def choose(node_id: str, loras: str) -> str:
    """``merge`` when this node applied this very stack last time, else ``hotswap``; remembered for next time."""
    digest = _digest(loras)
    with _lock:
        mode = "merge" if _last.get(node_id) == digest else "hotswap"
        _last[node_id] = digest
    return mode
