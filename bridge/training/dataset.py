"""Training datasets: images with same-name ``.txt`` captions, read from a zip (or from files fetched
one by one), checked whole before anything is kept, and written out again as one flat, normalized zip.

What is refused, with the file named: a zip that is not one, paths that climb out (``..``, absolute,
drive letters, backslashes), links, files that are neither images ComfyUI's dataset node reads
(PNG, JPEG, WebP) nor captions, empty or corrupt images, images too small or too large, an image
without its caption, a caption without its image, too many files or bytes (also uncompressed: a
zip bomb is refused from its directory before anything is inflated).
"""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import LoraBridgeError, TooLarge

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # what LoadImageTextDataSetFromFolder reads
CAPTION = ".txt"
_IGNORED = ("__MACOSX/", ".DS_Store", "Thumbs.db")  # what archivers add on their own
MB = 1024 * 1024


class DatasetInvalid(LoraBridgeError):
    """The dataset cannot be trained on; the message says which file and why."""


class DatasetTooLarge(TooLarge, DatasetInvalid):
    """A dataset over the size limit (uncompressed)."""


@dataclass(frozen=True)
class DatasetLimits:
    min_images: int = 1
    max_images: int = 500
    max_bytes: int = 1024 * MB  # all files together, uncompressed
    max_image_bytes: int = 64 * MB
    min_side: int = 64
    max_side: int = 8192


@dataclass(frozen=True)
class Item:
    """One training image and its caption (the trigger word already in it)."""

    stem: str
    suffix: str
    image: bytes
    caption: str
    size: tuple[int, int]


@dataclass
class Dataset:
    items: list[Item] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"images": len(self.items), "bytes": sum(len(i.image) for i in self.items),
                "sizes": sorted({f"{w}x{h}" for w, h in (i.size for i in self.items)})}

    def to_zip(self) -> bytes:
        """The normalized archive: ``0001.png`` + ``0001.txt`` … (flat, stored as checked)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for n, item in enumerate(self.items, 1):
                zf.writestr(f"{n:04d}{item.suffix}", item.image)
                zf.writestr(f"{n:04d}{CAPTION}", item.caption.encode())
        return buf.getvalue()


def member_path(name: str) -> PurePosixPath:
    """A zip member's path if it stays inside the archive's folder; ``DatasetInvalid`` otherwise."""
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DatasetInvalid(f"zip member {name!r}: absolute paths, drive letters and backslashes are not allowed")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise DatasetInvalid(f"zip member {name!r}: '..' would leave the dataset folder")
    return path


def read_zip(data: bytes, trigger_word: str | None = None, limits: DatasetLimits = DatasetLimits()) -> Dataset:
    """Check a dataset zip whole and return its items (``DatasetInvalid`` names the first problem)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DatasetInvalid(f"the dataset is not a readable zip archive ({exc})") from None
    with zf:
        members = []
        for info in zf.infolist():
            path = member_path(info.filename)
            if info.is_dir() or info.filename.startswith(_IGNORED) or path.name in _IGNORED:
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DatasetInvalid(f"zip member {info.filename!r} is a symbolic link")
            members.append((path, info))
        if len(members) > 2 * limits.max_images:
            raise DatasetInvalid(f"the dataset has {len(members)} files; at most {limits.max_images} images with their captions")
        total = sum(info.file_size for _, info in members)
        if total > limits.max_bytes:
            raise DatasetTooLarge(f"the dataset is {total / MB:.0f} MB uncompressed, over the limit of {limits.max_bytes / MB:.0f} MB")
        files = {}
        for path, info in members:
            try:
                files[str(path)] = zf.read(info)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:  # CRC, encryption, method
                raise DatasetInvalid(f"zip member {info.filename!r} cannot be read ({exc})") from None
    return read_files(files, trigger_word, limits)


def read_files(files: dict[str, bytes], trigger_word: str | None = None, limits: DatasetLimits = DatasetLimits()) -> Dataset:
    """Pair images with captions by path without extension and check each (``files``: path -> bytes)."""
    images: dict[str, tuple[str, bytes]] = {}
    captions: dict[str, bytes] = {}
    for name, data in sorted(files.items()):
        path = member_path(name)
        stem, suffix = str(path.with_suffix("")), path.suffix.lower()
        if suffix == CAPTION:
            captions[stem] = data
        elif suffix in IMAGE_FORMATS:
            if stem in images:
                raise DatasetInvalid(f"two images named {stem!r} ({images[stem][0]} and {name}): one caption cannot serve both")
            images[stem] = (name, data)
        else:
            raise DatasetInvalid(f"file {name!r} is neither an image ({', '.join(IMAGE_FORMATS)}) nor a caption ({CAPTION})")
    if len(images) < limits.min_images:
        raise DatasetInvalid(f"the dataset has {len(images)} image(s); at least {limits.min_images} needed")
    if len(images) > limits.max_images:
        raise DatasetInvalid(f"the dataset has {len(images)} images; at most {limits.max_images}")
    orphans = sorted(set(captions) - set(images))
    if orphans:
        raise DatasetInvalid(f"caption(s) without an image: {', '.join(o + CAPTION for o in orphans[:5])}")
    missing = sorted(images[stem][0] for stem in images if stem not in captions)
    if missing:
        raise DatasetInvalid(f"{len(missing)} image(s) have no caption file ({CAPTION} of the same name): {', '.join(missing[:5])}")
    items = [_item(stem, name, data, captions[stem], trigger_word, limits) for stem, (name, data) in images.items()]
    return Dataset(items)


def _item(stem: str, name: str, data: bytes, caption_bytes: bytes, trigger_word: str | None, limits: DatasetLimits) -> Item:
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DatasetInvalid(f"image {name!r} is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise DatasetInvalid(f"image {name!r} is {len(data) / MB:.0f} MB, over the limit of {limits.max_image_bytes / MB:.0f} MB")
    suffix = PurePosixPath(name).suffix.lower()
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
            if size[0] * size[1] > limits.max_side ** 2:
                raise DatasetInvalid(f"image {name!r} is {size[0]}x{size[1]}: over {limits.max_side}x{limits.max_side}")
            img.load()  # decodes every byte: a truncated file fails here
    except DatasetInvalid:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetInvalid(f"image {name!r} cannot be decoded ({type(exc).__name__}: {exc})") from None
    if fmt != IMAGE_FORMATS[suffix]:
        raise DatasetInvalid(f"image {name!r} is {fmt} data under a {suffix} name")
    if min(size) < limits.min_side or max(size) > limits.max_side:
        raise DatasetInvalid(f"image {name!r} is {size[0]}x{size[1]}: each side must be {limits.min_side}..{limits.max_side} px")
    try:
        caption = caption_bytes.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DatasetInvalid(f"the caption of {name!r} is not UTF-8 text") from None
    if not caption:
        raise DatasetInvalid(f"the caption of {name!r} is empty")
    if trigger_word and trigger_word.lower() not in caption.lower().replace(",", " ").split():
        caption = f"{trigger_word}, {caption}"
    return Item(stem, ".jpg" if suffix == ".jpeg" else suffix, data, caption, size)


def extract(data: bytes, folder: Path, limits: DatasetLimits = DatasetLimits()) -> Dataset:
    """Check a normalized dataset zip and write its files into the new ``folder``, which appears
    only once complete (written beside it under a hidden name, then renamed)."""
    dataset = read_zip(data, None, limits)
    if folder.exists():
        raise DatasetInvalid(f"dataset folder {folder.name!r} already exists")
    tmp = folder.with_name(f".{folder.name}.partial")
    tmp.mkdir(parents=True)
    try:
        for n, item in enumerate(dataset.items, 1):
            (tmp / f"{n:04d}{item.suffix}").write_bytes(item.image)
            (tmp / f"{n:04d}{CAPTION}").write_text(item.caption, encoding="utf-8")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataset
