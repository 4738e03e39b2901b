"""What a LoRA file is, from its header alone: format, targets, ranks, alphas, family, trigger words.

Works on anything that can serve byte ranges: a local file, or an HTTP/S3 object through
``sources.RangeReader`` (a 1 GB remote file is inspected with a few KB of traffic).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .families import (
    _DOWN_SUFFIXES,
    UNET_FAMILIES,
    detect_family,
    part_of,
    split_key,
    variant_name,
)
from .header import (
    DEFAULT_MAX_HEADER,
    Header,
    InvalidLoraFile,
    header_length,
    parse_header,
)

if TYPE_CHECKING:
    from .sources import FetchPolicy

ReadRange = Callable[[int, int], bytes]  # (offset, length) -> bytes
HEAD_WINDOW = 64 * 1024  # first read: the length prefix, usually the whole header and the alphas
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


@dataclass
class LoraInfo:
    """Inspection result; ``to_dict`` gives the JSON form used by the CLI, the nodes and the API."""

    source: str
    size: int
    format: str
    family: str
    family_source: str
    family_evidence: str
    variant: str | None
    targets: list[str]
    ranks: list[int]
    alphas: list[float]
    dtypes: list[str]
    modules: int
    tensors: int
    dora: bool = False
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    trigger_words: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def autov2(self) -> str | None:
        """Civitai's short hash: the first 10 hex digits of the file's SHA-256."""
        return self.sha256[:10].upper() if self.sha256 else None

    @property
    def family_name(self) -> str:
        return variant_name(self.family, self.variant)

    @property
    def rank(self) -> int | None:
        return max(self.ranks) if self.ranks else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "autov2": self.autov2, "family_name": self.family_name}


def _format(suffixes: Counter[str], module_prefixes: set[str], conv: bool, metadata: Mapping[str, str]) -> str:
    has = lambda *names: any(suffixes[n] for n in names)  # noqa: E731
    if has(".hada_w1_a"):
        return "lycoris_loha"
    if has(".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".lokr_w2_a"):
        return "lycoris_lokr"
    if has(".oft_blocks", ".oft_diag"):
        return "oft"
    if has(".a1.weight") and has(".b1.weight"):
        return "glora"
    if has(".lora_down.weight"):
        if module_prefixes <= {"diffusion_model."} and not any(k.startswith("ss_") for k in metadata):
            return "comfyui_trained"
        return "kohya_locon" if conv or has(".lora_mid.weight") else "kohya_lora"
    if has(".lora_A.weight", ".lora_A.default.weight", ".lora_A"):
        return "peft"
    if has(".lora.down.weight", "_lora.down.weight", ".lora_linear_layer.down.weight"):
        return "diffusers"
    if has(".diff", ".diff_b"):
        return "full_diff"
    return "unknown"


def trigger_words(metadata: Mapping[str, str], limit: int = 3) -> list[str]:
    """``modelspec.trigger_phrase`` if set, else the most frequent ``ss_tag_frequency`` tag(s)."""
    phrase = metadata.get("modelspec.trigger_phrase", "").strip()
    if phrase:
        return [w.strip() for w in phrase.split(",") if w.strip()][:limit]
    try:
        freq = json.loads(metadata.get("ss_tag_frequency", "{}"))
    except ValueError:
        return []
    counts: Counter[str] = Counter()
    if isinstance(freq, dict):  # (counts are numbers of images; a float one is taken whole)
        for tags in freq.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)) and tag.strip():
                        counts[tag.strip()] += int(n)
    if not counts:
        return []
    top = counts.most_common(1)[0][1]
    return [tag for tag, n in counts.most_common(limit) if n == top]


def _alpha_value(header: Header, name: str, read: ReadRange, window: bytes) -> float | None:
    t = header.tensors[name]
    if t.dtype not in _NP_DTYPES or t.shape not in ((), (1,)):
        return None
    start = header.data_start + t.start
    if start + t.nbytes <= len(window):
        raw = window[start : start + t.nbytes]
    else:
        raw = read(start, t.nbytes)
    return float(np.frombuffer(raw, dtype=_NP_DTYPES[t.dtype])[0])


def describe(header: Header, size: int, source: str, read: ReadRange, window: bytes = b"") -> LoraInfo:
    """Build a ``LoraInfo`` from a parsed header (alphas read through ``read`` unless in ``window``)."""
    shapes = {name: t.shape for name, t in header.tensors.items()}
    suffixes: Counter[str] = Counter()
    modules: set[str] = set()
    prefixes: set[str] = set()
    parts: set[str] = set()
    ranks: set[int] = set()
    conv = dora = False
    dtypes: set[str] = set()
    alpha_names = []
    for name, t in header.tensors.items():
        module, suffix = split_key(name)
        suffixes[suffix] += 1
        modules.add(module)
        prefixes.add(module.split(".", 1)[0] + "." if "." in module else module.split("_", 1)[0] + "_")
        parts.add(part_of(module)[0])
        if suffix in _DOWN_SUFFIXES and len(t.shape) >= 2:
            ranks.add(t.shape[0])
            conv = conv or (len(t.shape) == 4 and t.shape[2:] != (1, 1))
        if suffix == ".alpha":
            alpha_names.append(name)
        elif suffix == ".dora_scale":
            dora = True
        elif suffix:
            dtypes.add(t.dtype)
    detection = detect_family(shapes, header.metadata)
    warnings = [detection.warning] if detection.warning else []
    fmt = _format(suffixes, prefixes, conv, header.metadata)
    if fmt == "unknown":
        warnings.append("no LoRA tensors recognised (is this a LoRA file?)")
    unknown_keys = suffixes[""]
    if unknown_keys:
        warnings.append(f"{unknown_keys} tensor(s) with names no LoRA loader uses")
    alphas = sorted({a for n in alpha_names if (a := _alpha_value(header, n, read, window)) is not None})
    model_part = "unet" if detection.family in UNET_FAMILIES else "transformer"
    targets = sorted(model_part if p == "model" else p for p in parts)
    return LoraInfo(
        source=source, size=size, format=fmt, family=detection.family, family_source=detection.source,
        family_evidence=detection.evidence, variant=detection.variant, targets=targets, ranks=sorted(ranks), alphas=alphas,
        dtypes=sorted(dtypes), modules=len(modules - set(alpha_names)), tensors=len(header.tensors), dora=dora,
        metadata=dict(header.metadata), trigger_words=trigger_words(header.metadata), warnings=warnings,
    )


def inspect_reader(read: ReadRange, size: int, source: str, max_header: int = DEFAULT_MAX_HEADER) -> LoraInfo:
    """Inspect through a range reader: one read of ``HEAD_WINDOW`` bytes, a second only for big headers."""
    window = read(0, min(size, HEAD_WINDOW))
    n = header_length(window, max_header, size)
    if 8 + n > len(window):
        window = window + read(len(window), 8 + n - len(window))
    header = parse_header(window, size, max_header)
    return describe(header, size, source, read, window)


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inspect_file(path: Path | str, with_hash: bool = True, max_header: int = DEFAULT_MAX_HEADER) -> LoraInfo:
    """Inspect a local ``.safetensors`` file (``with_hash`` adds its SHA-256: a full read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            def read(offset: int, length: int) -> bytes:
                f.seek(offset)
                data = f.read(length)
                if len(data) != length:
                    raise InvalidLoraFile(f"short read at offset {offset} (file changed or truncated)")
                return data

            info = inspect_reader(read, size, str(path), max_header)
    except IsADirectoryError:
        raise InvalidLoraFile(f"{path} is a directory") from None
    except FileNotFoundError:
        raise InvalidLoraFile(f"{path} does not exist") from None
    if with_hash:
        info.sha256 = sha256_file(path)
    return info


def inspect_source(source: str, policy: FetchPolicy | None = None, with_hash: bool = True) -> LoraInfo:
    """Inspect a local path, ``file://``, ``http(s)://`` or ``s3://`` LoRA; remote ones by ranged reads only."""
    from .sources import FetchPolicy, check_source, parse_source, transport_for

    src = parse_source(source)
    policy = policy or FetchPolicy.configured()
    if src.kind == "local":
        check_source(src, policy)
        assert src.path is not None
        return inspect_file(src.path, with_hash=with_hash)
    transport = transport_for(src, policy)
    stat = transport.stat()
    return inspect_reader(transport.read_range, stat.size, src.display)


def verify_source(source: str, policy: FetchPolicy, chunk: int = 8 * 1024 * 1024) -> LoraInfo:
    """``inspect_source`` and then every byte read once: the whole file is there and readable, and
    its SHA-256 (which the pods check when they fetch it) comes from what was read."""
    from .sources import parse_source, transport_for

    info = inspect_source(source, policy, with_hash=True)
    if info.sha256:  # a local file was hashed whole already
        return info
    transport = transport_for(parse_source(source), policy)
    digest = hashlib.sha256()
    for start in range(0, info.size, chunk):
        digest.update(transport.read_range(start, min(chunk, info.size - start)))
    info.sha256 = digest.hexdigest()
    return info
