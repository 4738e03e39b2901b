"""Validation rules for LoRA names, extensions and sizes (what the product documents ask for)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable

from ..errors import LoraBridgeError, TooLarge

SAFE_EXTENSION = ".safetensors"
PICKLE_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
MB = 1024 * 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +()@-]{0,127}$")


class LoraValidationError(LoraBridgeError):
    """A name, extension or size that the rules refuse."""


class LoraNotFound(LoraValidationError):
    """No file by that name; ``candidates`` lists what exists that the caller may have meant."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


class LoraTooLarge(TooLarge, LoraValidationError):
    """A LoRA file over the hard size limit."""


@dataclass(frozen=True)
class SizeLimits:
    warn_bytes: int = 500 * MB
    max_bytes: int = 4096 * MB

    def check(self, size: int, what: str = "LoRA") -> str | None:
        """Raise above the hard limit; return a warning above the warning threshold."""
        if size > self.max_bytes:
            raise LoraTooLarge(f"{what} is {size / MB:.0f} MB, over the limit of {self.max_bytes / MB:.0f} MB")
        if size > self.warn_bytes:
            return f"{what} is {size / MB:.0f} MB (over {self.warn_bytes / MB:.0f} MB): large for a LoRA"
        return None


def check_extension(name: str, allow_pickle: bool = False) -> str:
    """Return the file's extension if allowed: ``.safetensors``, or pickle formats when allowed."""
    ext = PurePosixPath(name).suffix.lower()
    if ext == SAFE_EXTENSION:
        return ext
    if ext in PICKLE_EXTENSIONS:
        if allow_pickle:
            return ext
        raise LoraValidationError(
            f"{name!r} is a pickle-based file ({ext}), which can run code when loaded; refused. "
            "Convert it to .safetensors, or allow pickle formats explicitly (then it is loaded with weights_only=True)"
        )
    raise LoraValidationError(f"{name!r} has extension {ext or '(none)'}; expected {SAFE_EXTENSION}")


def safe_name(name: str) -> str:
    """A file name that is safe to create: no separators, no '..', no absolute path, no control chars."""
    if not isinstance(name, str) or "/" in name or "\\" in name or "\x00" in name or ".." in name:
        raise LoraValidationError(f"invalid name {name!r}: no path separators or '..' allowed")
    if not _SAFE_NAME.match(name):
        raise LoraValidationError(
            f"invalid name {name!r}: use letters, digits, and . _ - + ( ) @ or spaces, starting with a letter or digit"
        )
    return name


def resolve_name(name: str, available: Iterable[str], allow_pickle: bool = False) -> str:
    """Match a requested LoRA name against the files that exist (names relative to the loras folders).

    Accepts the exact name, or the name without its extension. A wrong extension or an unknown
    name raises ``LoraNotFound`` naming the files that share its stem or look alike.
    """
    if not name or name.startswith("/") or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise LoraValidationError(f"invalid LoRA name {name!r}: relative names inside the loras folders only")
    files = list(available)
    if name in files:
        check_extension(name, allow_pickle)
        return name
    allowed = (SAFE_EXTENSION, *PICKLE_EXTENSIONS) if allow_pickle else (SAFE_EXTENSION,)
    requested = PurePosixPath(name)
    has_ext = requested.suffix.lower() in (SAFE_EXTENSION, *PICKLE_EXTENSIONS)
    stem = str(requested.with_suffix("")) if has_ext else name
    if not has_ext:  # a bare name means "<name>.safetensors" (or a pickle file, when allowed)
        for ext in allowed:
            if stem + ext in files:
                return stem + ext
    same_stem = [f for f in files if str(PurePosixPath(f).with_suffix("")) == stem]
    similar = difflib.get_close_matches(name, files, n=5, cutoff=0.6)
    candidates = list(dict.fromkeys(same_stem + similar))
    hint = f"; did you mean: {', '.join(candidates)}" if candidates else f"; {len(files)} LoRA file(s) available"
    if same_stem and not any(f.lower().endswith(allowed) for f in same_stem):
        hint += " (pickle formats are refused unless allowed)"
    raise LoraNotFound(f"LoRA {name!r} not found{hint}", candidates)
