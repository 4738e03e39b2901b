"""Pod-wide state shared by the nodes and the routes: disk cache, memory cache, fetch policy.

Created on first use inside ComfyUI (``folder_paths`` is imported lazily). The disk cache
lives in ``LORA_BRIDGE_STORE`` (default ``<models>/lora_bridge_store``) and links fetched
files by name into the first ``loras`` folder, where the stock loader can see them too.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..bridge.errors import LoraBridgeError
from ..bridge.lorafiles.fetch import (
    FetchCancelled,
    IntegrityError,
    RetryPolicy,
    fetch_lora,
)
from ..bridge.lorafiles.inspect import inspect_file, sha256_file
from ..bridge.lorafiles.sources import FetchPolicy, parse_source
from ..bridge.lorafiles.store import LoraStore
from ..bridge.lorafiles.validate import check_extension, resolve_name
from ..bridge.pack_protocol import STORE_SCHEME
from ..bridge.settings import settings
from .lora_handle import LoraHandle
from .memory_cache import MemoryCache

log = logging.getLogger("lora_bridge")
T = TypeVar("T")
_lock = threading.Lock()
_store: LoraStore | None = None
_memory: MemoryCache | None = None
_hashes: dict[tuple[str, int, int], str] = {}


def loras_folders() -> list[Path]:
    import folder_paths

    return [Path(p) for p in folder_paths.get_folder_paths("loras")]


def disk_store() -> LoraStore:
    global _store
    with _lock:
        if _store is None:
            import folder_paths

            configured = settings()
            _store = LoraStore(configured.store_path(Path(folder_paths.models_dir)), loras_folders()[0],
                               configured.disk_budget_bytes)
        return _store


def memory_cache() -> MemoryCache:
    global _memory
    with _lock:
        if _memory is None:
            _memory = MemoryCache()
        return _memory


def fetch_policy() -> FetchPolicy:
    """The environment's policy; local files may also come from the ``loras`` folders."""
    policy = FetchPolicy.configured()
    return FetchPolicy(**{**policy.__dict__, "local_roots": (*policy.local_roots, *loras_folders())})


def per_file_version(cache: dict[tuple[str, int, int], T], path: Path, compute: Callable[[Path], T]) -> tuple[T, os.stat_result]:
    """``compute(path)``, kept in ``cache`` until the file's size or modification time changes; and its stat."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in cache:
        cache[key] = compute(path)
    return cache[key], st


def file_sha256(path: Path) -> str:
    """SHA-256 of a local file: from the store's content address when it is a cache link, else hashed once per version."""
    real = path.resolve()
    if real.parent == disk_store().blobs and len(real.stem) == 64:
        return real.stem
    return per_file_version(_hashes, real, sha256_file)[0]


def _summary(info: Any) -> dict[str, Any]:
    data = info.to_dict()
    data.pop("metadata", None)
    return data


def handle_for_name(name: str) -> LoraHandle:
    """A file in the ``loras`` folders by name (``.safetensors`` may be left out)."""
    import folder_paths

    policy = FetchPolicy.configured()
    resolved = resolve_name(name, folder_paths.get_filename_list("loras"), allow_pickle=policy.allow_pickle)
    check_extension(resolved, policy.allow_pickle)
    path = Path(folder_paths.get_full_path_or_raise("loras", resolved))
    info = _summary(inspect_file(path, with_hash=False)) if path.suffix == ".safetensors" else {}
    return LoraHandle(path=path, name=resolved, sha256=file_sha256(path), info=info)


def handle_for_hash(sha256: str, name: str | None = None) -> LoraHandle:
    """A file already in the disk cache, by SHA-256 (``sha256:<hex>`` sources; the bridge prefetched it)."""
    hit = disk_store().lookup(sha256=sha256.lower())
    if hit is None:
        raise LoraBridgeError(f"LoRA sha256:{sha256[:12]}… is not in this pod's cache (prefetch it first)")
    sha, path = hit
    info = _summary(inspect_file(path, with_hash=False)) if path.suffix == ".safetensors" else {}
    return LoraHandle(path=path, name=name or sha[:12], sha256=sha, info=info, source=STORE_SCHEME + sha)


def is_loras_name(source: str) -> bool:
    """True for a plain name in the ``loras`` folders (no scheme, not an absolute path)."""
    return "://" not in source and not source.startswith(("/", "~"))


def fetch_handle(source: str, sha256: str | None = None, name: str | None = None,
                 progress: Callable[[int, int], None] | None = None, pin: bool = False,
                 cancel: Callable[[], bool] | None = None,
                 on_retry: Callable[[int, str, float], None] | None = None) -> LoraHandle:
    """Fetch ``source`` into the disk cache (or use a ``loras`` file by name) and return its handle.

    ``cancel`` stops the download (default: ComfyUI's interrupt, so *Cancel* in the editor stops it);
    a stopped download raises ``FetchCancelled`` (or ComfyUI's interrupt exception) and keeps its
    partial file hidden for a later resume.
    """
    if source.startswith(STORE_SCHEME):
        return handle_for_hash(source[len(STORE_SCHEME):], name)
    if is_loras_name(source):
        handle = handle_for_name(source)
        if sha256 and handle.sha256 != sha256.strip().lower():
            raise IntegrityError(f"{handle.name}: SHA-256 is {handle.sha256}, expected {sha256.strip().lower()}")
        return handle
    interrupted: Callable[[], bool] | None = None
    try:
        import comfy.model_management

        interrupted = comfy.model_management.processing_interrupted
    except ImportError:
        pass
    src = parse_source(source)
    try:
        result = fetch_lora(src, disk_store(), sha256=sha256, name=name, policy=fetch_policy(), progress=progress,
                            cancel=cancel or interrupted, pin=pin, on_retry=on_retry,
                            retry=RetryPolicy(delays=settings().fetch_retry_delays))
    except FetchCancelled:
        if cancel is None and interrupted is not None:
            import comfy.model_management

            comfy.model_management.throw_exception_if_processing_interrupted()
        raise
    info = _summary(result.info) if result.info else {}
    shown = result.link.name if result.link else (name or src.filename or result.sha256[:12])
    return LoraHandle(path=result.path, name=shown, sha256=result.sha256, info=info, source=source)

