"""In-memory LRU of loaded LoRAs, keyed by content hash, bounded by count and bytes.

An entry holds the LoRA's state dict (read once from disk) and its key-converted patches
per target model architecture, so re-applying a cached LoRA neither re-reads nor
re-converts the file. Thread-safe; counts hits, misses and evictions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from ..bridge.lorafiles.store import CacheCounters
from ..bridge.settings import settings

# a LoRA's patches converted for one model (key -> patch) and which of their keys are the diffusion model's
Converted = tuple[dict[Any, Any], frozenset[Any]]


@dataclass
class CachedLora:
    sha256: str
    name: str
    state_dict: dict[str, Any]
    nbytes: int
    converted: dict[str, Converted] = field(default_factory=dict)  # model signature -> patches


@dataclass(frozen=True)
class MemoryStats(CacheCounters):
    max_entries: int = 0
    max_bytes: int = 0


class MemoryCache:
    """LRU of ``CachedLora`` (default: 5 entries, 4 GiB; ``LORA_BRIDGE_MEMORY_ENTRIES``/``_MB``)."""

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        configured = settings()
        self.max_entries = max_entries or configured.memory_entries
        self.max_bytes = max_bytes or configured.memory_bytes
        self._entries: OrderedDict[str, CachedLora] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = 0

    def get_or_load(self, sha256: str, load: Callable[[], CachedLora]) -> tuple[CachedLora, bool]:
        """The cached entry (a hit) or ``load()``'s result, stored (a miss)."""
        with self._lock:
            entry = self._entries.get(sha256)
            if entry is not None:
                self._entries.move_to_end(sha256)
                self.hits += 1
                return entry, True
            self.misses += 1
        entry = load()  # outside the lock: reading a file must not block other lookups
        with self._lock:
            self._entries[sha256] = entry
            self._entries.move_to_end(sha256)
            self._shrink(keep=sha256)
        return entry, False

    def converted(self, entry: CachedLora, signature: str, convert: Callable[[], Converted]) -> tuple[Converted, bool]:
        """Patches of ``entry`` for a model ``signature``, converted once."""
        with self._lock:
            patches = entry.converted.get(signature)
        if patches is not None:
            return patches, True
        patches = convert()
        with self._lock:
            entry.converted[signature] = patches
        return patches, False

    def _shrink(self, keep: str) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        for sha in list(self._entries):
            if len(self._entries) <= self.max_entries and total <= self.max_bytes:
                break
            if sha == keep:
                continue
            total -= self._entries.pop(sha).nbytes
            self.evictions += 1

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            return n

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"sha256": e.sha256, "name": e.name, "bytes": e.nbytes, "converted_for": sorted(e.converted)}
                    for e in reversed(self._entries.values())]

    def stats(self) -> MemoryStats:
        with self._lock:
            return MemoryStats(entries=len(self._entries), bytes=sum(e.nbytes for e in self._entries.values()),
                               hits=self.hits, misses=self.misses, evictions=self.evictions,
                               max_entries=self.max_entries, max_bytes=self.max_bytes)
