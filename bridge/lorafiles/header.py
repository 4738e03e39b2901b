"""Safe parsing of a ``.safetensors`` header: bounded, validated, never trusting the file.

Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor data. Every
offset, shape and dtype is checked against the others and against the file size, so a
corrupt, truncated or hostile file gives ``InvalidLoraFile`` naming the problem instead of a
crash or a huge allocation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import LoraBridgeError

DEFAULT_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


class InvalidLoraFile(LoraBridgeError):
    """The file is not a well-formed safetensors file (or not a LoRA we can use)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset inside the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A validated header: tensors by name, the ``__metadata__`` strings, and the data offset."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    @property
    def data_size(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)


def header_length(prefix: bytes, max_header: int = DEFAULT_MAX_HEADER, file_size: int | None = None) -> int:
    """The JSON header's length from the file's first 8 bytes, bounds-checked."""
    if len(prefix) < 8:
        raise InvalidLoraFile(f"file too short for a safetensors header ({len(prefix)} bytes)")
    n = int.from_bytes(prefix[:8], "little")
    if n < 2:
        raise InvalidLoraFile(f"header length {n} is too small")
    if n > max_header:
        raise InvalidLoraFile(f"header length {n} exceeds the limit of {max_header} bytes")
    if file_size is not None and 8 + n > file_size:
        raise InvalidLoraFile(f"header length {n} runs past the end of the {file_size}-byte file (truncated?)")
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidLoraFile(f"duplicate key {key!r} in header")
        out[key] = value
    return out


def _tensor(name: str, spec: Any) -> TensorInfo:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise InvalidLoraFile(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise InvalidLoraFile(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidLoraFile(f"tensor {name!r}: shape must be a list of at most 8 non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise InvalidLoraFile(f"tensor {name!r}: data_offsets must be two non-negative integers")
    start, end = offsets
    if end < start:
        raise InvalidLoraFile(f"tensor {name!r}: data_offsets end before they start")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if expected != end - start:
        raise InvalidLoraFile(f"tensor {name!r}: {dtype}{shape} needs {expected} bytes but its offsets span {end - start}")
    return TensorInfo(dtype, tuple(shape), start, end)


def parse_header(data: bytes, file_size: int | None = None, max_header: int = DEFAULT_MAX_HEADER) -> Header:
    """Parse the header from the file's first bytes (``data`` must hold 8 + N bytes)."""
    n = header_length(data, max_header, file_size)
    if len(data) < 8 + n:
        raise InvalidLoraFile(f"header needs {n} bytes but only {len(data) - 8} are available (truncated?)")
    raw = data[8 : 8 + n]
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidLoraFile(f"header is not valid JSON: {exc}"[:300]) from None
    if not isinstance(doc, dict):
        raise InvalidLoraFile("header must be a JSON object")
    meta = doc.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InvalidLoraFile("__metadata__ must map strings to strings")
    tensors = {name: _tensor(name, spec) for name, spec in doc.items()}
    spans = sorted((t.start, t.end, name) for name, t in tensors.items() if t.end > t.start)
    for (_, prev_end, prev), (start, _, name) in zip(spans, spans[1:]):
        if start < prev_end:
            raise InvalidLoraFile(f"tensors {prev!r} and {name!r} overlap in the data section")
    header = Header(tensors, meta, n)
    if file_size is not None and header.data_start + header.data_size > file_size:
        raise InvalidLoraFile(
            f"tensor data needs {header.data_start + header.data_size} bytes but the file has {file_size} (truncated?)"
        )
    return header
