"""Fetch a LoRA into the verified disk cache: resumable, retried, single-flight, atomic.

Bytes go to a hidden temporary name next to the cache's files (one file per parallel range),
so nothing partial is ever visible under a final name. An interrupted download resumes from
the bytes already on disk (HTTP ``Range`` + ``If-Range``, S3 ranged GETs with ``IfMatch``);
a server that ignores ``Range`` or an object that changed (ETag/size) restarts it from zero.
The SHA-256 is computed while streaming (or over the assembled file for parallel ranges),
then size, hash and safetensors header are checked before the atomic rename.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import random
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import FetchCancelled, FetchError, IntegrityError
from .header import InvalidLoraFile
from .inspect import LoraInfo, inspect_file
from .sources import (
    Body,
    FetchPolicy,
    RemoteChanged,
    RemoteStat,
    Source,
    SourceError,
    SourceRefused,
    Transport,
    parse_source,
    transport_for,
)
from .store import LoraStore
from .validate import PICKLE_EXTENSIONS, SAFE_EXTENSION, check_extension, safe_name

ProgressCallback = Callable[[int, int], None]  # (bytes done, total bytes)
CancelCheck = Callable[[], bool]
RetryCallback = Callable[[int, str, float], None]  # (attempt that failed, why, seconds until the next)
CHUNK = 4 << 20  # read1 sizes: large blocks keep Python overhead per byte low
SMALL_CHUNK = 64 << 10  # bodies without read1 (boto3's) are read in small blocks
WRITEBACK = 64 << 20  # hand written data to the disk in steps, so the final fsync is short
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts that kept no progress, bounded three ways: total
    time, attempts, and bytes thrown away (a server that ignores ``Range`` and cuts every response
    makes each attempt start again from zero: that is not progress)."""

    delays: tuple[float, ...] = (2.0, 4.0, 8.0)
    jitter: float = 0.25
    max_total: float = 900.0
    max_attempts: int = 12  # connection attempts per download, progress or not
    max_wasted_ratio: float = 1.0  # bytes received then thrown away, as a multiple of the file size
    parallel: int = 4  # ranges downloaded at once for large files
    parallel_min_bytes: int = 256 * 1024 * 1024  # files smaller than this use one stream


@dataclass
class FetchResult:
    path: Path
    sha256: str
    size: int
    cached: bool
    info: LoraInfo | None
    link: Path | None = None
    warnings: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Network errors worth a retry, from the HTTP/S3 libraries already loaded by the transport."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    if "urllib3" in sys.modules:
        errors.append(sys.modules["urllib3"].exceptions.HTTPError)
    if "botocore.exceptions" in sys.modules:
        errors.append(sys.modules["botocore.exceptions"].BotoCoreError)
    return tuple(errors)


class _StreamHasher:
    """SHA-256 on a helper thread, so hashing overlaps receiving (hashlib releases the GIL)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="lora-fetch-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._sha.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finished(self) -> "hashlib._Hash":
        """The hash object after every queued block was hashed (to continue it in this thread)."""
        self.close()
        return self._sha

    def hexdigest(self) -> str:
        return self.finished().hexdigest()


class _Progress:
    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total, self.callback, self.done, self.fetched = total, callback, 0, 0
        self.lock = threading.Lock()
        self.last = 0.0
        self.reported: int | None = None

    def add(self, n: int, fetched: bool = True) -> None:
        with self.lock:
            self.done += n
            self.fetched += n if fetched else 0
            if time.monotonic() - self.last > 0.1 or self.done >= self.total:
                self._report()

    def flush(self) -> None:
        """Report bytes that arrived since the last report (reports are at most 10 a second, so
        without this a download that stalls would show an older count for as long as it stalls)."""
        with self.lock:
            if self.done != self.reported:
                self._report()

    def _report(self) -> None:
        self.last, self.reported = time.monotonic(), self.done
        if self.callback:
            self.callback(self.done, self.total)


@dataclass
class _Plan:
    size: int
    validator: str | None
    segments: list[tuple[int, int]]

    def to_json(self) -> str:
        return json.dumps({"size": self.size, "validator": self.validator, "segments": self.segments})


class _Download:
    """One download of ``transport`` into ``temp`` (+ ``temp.N`` for extra ranges)."""

    def __init__(self, transport: Transport, temp: Path, retry: RetryPolicy, progress: ProgressCallback | None,
                 cancel: CancelCheck | None, display: str, on_retry: RetryCallback | None = None) -> None:
        self.transport, self.temp, self.retry, self.display = transport, temp, retry, display
        self.cancel = cancel or (lambda: False)
        self.callback = progress
        self.on_retry = on_retry
        self.attempts = 0
        self.wasted = 0
        self.state = temp.with_name(temp.name + ".json")
        self.stop = threading.Event()
        self.transient = _transient_errors()
        self._hasher: _StreamHasher | None = None  # the single stream's hasher (replaced on a restart)
        self._bodies: set[Any] = set()  # responses being read, for the cancel watchdog
        self._bodies_lock = threading.Lock()
        self._progress: _Progress | None = None  # the current attempt's

    def _watchdog(self, finished: threading.Event) -> None:
        """Progress stays current while reads stall, and a cancel is prompt: a read blocked on a
        stalled server is woken by shutting its socket."""
        while not finished.wait(0.1):
            if self._progress is not None:
                self._progress.flush()
            if self.cancel():
                with self._bodies_lock:
                    for body in self._bodies:
                        _shutdown(body)
                return

    def _segment_path(self, i: int) -> Path:
        return self.temp if i == 0 else self.temp.with_name(f"{self.temp.name}.{i}")

    def _discard(self, plan: _Plan | None) -> None:
        for i in range(len(plan.segments) if plan else 1):
            self._segment_path(i).unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)

    def _plan(self, stat: RemoteStat) -> _Plan:
        try:
            old = json.loads(self.state.read_text())
            if old["size"] == stat.size and old["validator"] == stat.validator and stat.validator:
                return _Plan(stat.size, stat.validator, [tuple(s) for s in old["segments"]])
            self._discard(_Plan(old["size"], None, old["segments"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            self._segment_path(0).unlink(missing_ok=True)
        n = 1
        if stat.ranges and self.retry.parallel > 1 and stat.size >= self.retry.parallel_min_bytes:
            n = self.retry.parallel
        bounds = [stat.size * i // n for i in range(n + 1)]
        plan = _Plan(stat.size, stat.validator, [(bounds[i], bounds[i + 1]) for i in range(n)])
        self.state.write_text(plan.to_json())
        return plan

    def _back_off(self, failures: int, exc: BaseException, deadline: float, what: str) -> None:
        """Wait before attempt ``failures + 1`` (2, 4, 8 s ± jitter by default), or raise when out of tries or time."""
        if self.cancel():
            raise FetchCancelled(f"download of {self.display} cancelled") from None
        if failures > len(self.retry.delays):
            raise FetchError(f"{what} failed after {failures} attempts: {_reason(exc)}") from None
        if self.attempts >= self.retry.max_attempts:
            raise FetchError(f"{what} gave up after {self.attempts} connection attempts: {_reason(exc)}") from None
        delay = self.retry.delays[failures - 1] * (1 + random.uniform(-self.retry.jitter, self.retry.jitter))
        if time.monotonic() + delay > deadline:
            raise FetchError(f"{what} ran out of time ({self.retry.max_total:.0f} s): {_reason(exc)}") from None
        if self.on_retry is not None:
            self.on_retry(failures, _reason(exc), delay)
        end = time.monotonic() + delay
        while time.monotonic() < end and not (self.cancel() or self.stop.is_set()):
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def _segment(self, plan: _Plan, i: int, progress: _Progress, hasher: _StreamHasher | None, deadline: float) -> None:
        start, end = plan.segments[i]
        path = self._segment_path(i)
        length = end - start
        done = path.stat().st_size if path.exists() else 0
        if done > length:
            path.unlink()
            done = 0
        if hasher is not None and done:
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    hasher.update(block)
        progress.add(done, fetched=False)
        failures = 0
        while done < length:
            if self.cancel():
                raise FetchCancelled(f"download of {self.display} cancelled at {progress.done} bytes")
            if self.stop.is_set():
                return
            try:
                self.attempts += 1
                body, ranged = self.transport.open(start + done, end, plan.validator)
                with self._bodies_lock:
                    self._bodies.add(body)
                try:
                    mode = "ab"
                    if not ranged:  # the server ignored Range: start again from zero
                        if len(plan.segments) > 1:
                            raise _NoRanges()
                        progress.add(-done, fetched=False)
                        self.wasted += done
                        if self.wasted > self.retry.max_wasted_ratio * max(plan.size, 1):
                            raise FetchError(f"download of {self.display}: the server ignores Range and cuts "
                                             f"responses; {self.wasted} bytes were received and thrown away; giving up")
                        done = 0
                        if hasher is not None:
                            hasher.close()
                            hasher = self._hasher = _StreamHasher()
                        mode = "wb"
                    # read1: what has arrived, so a stall or cut loses no received bytes
                    read = getattr(body, "read1", None) or functools.partial(_read_small, body)
                    with open(path, mode) as f:
                        written = done
                        while done < length:
                            block = read(min(CHUNK, length - done))
                            if not block:
                                raise ConnectionError(f"connection closed at byte {start + done}")
                            f.write(block)
                            if hasher is not None:
                                hasher.update(block)
                            done += len(block)
                            if hasher is not None and done - written >= WRITEBACK:  # write to disk now, not at fsync
                                f.flush()
                                os.posix_fadvise(f.fileno(), written, done - written, os.POSIX_FADV_DONTNEED)
                                written = done
                            if ranged:  # resumable: these bytes are kept whatever happens next
                                failures = 0
                            progress.add(len(block))
                            if self.cancel() or self.stop.is_set():
                                break
                finally:
                    with self._bodies_lock:
                        self._bodies.discard(body)
                    body.close()
            except self.transient as exc:
                failures += 1
                self._back_off(failures, exc, deadline, f"download of {self.display}")

    def stat(self, deadline: float) -> RemoteStat:
        """The remote size and validator, retried like the body."""
        failures = 0
        while True:
            try:
                return self.transport.stat()
            except self.transient as exc:
                failures += 1
                self._back_off(failures, exc, deadline, f"reaching {self.display}")

    def run(self, stat: RemoteStat) -> tuple[str, int]:
        """Download until complete; returns (sha256 hex, bytes fetched over the network)."""
        finished = threading.Event()
        watchdog = threading.Thread(target=self._watchdog, args=(finished,), name="lora-fetch-watchdog", daemon=True)
        watchdog.start()
        try:
            return self._run(stat)
        finally:
            finished.set()
            watchdog.join()

    def _run(self, stat: RemoteStat) -> tuple[str, int]:
        deadline = time.monotonic() + self.retry.max_total
        restarts = 0
        while True:
            plan = self._plan(stat)
            progress = self._progress = _Progress(plan.size, self.callback)
            try:
                if len(plan.segments) == 1:
                    self._hasher = _StreamHasher()
                    try:
                        self._segment(plan, 0, progress, self._hasher, deadline)
                    finally:
                        self._hasher.close()
                    if self.cancel():
                        raise FetchCancelled(f"download of {self.display} cancelled")
                    digest = self._hasher.hexdigest()
                else:
                    self._hasher = _StreamHasher()
                    try:
                        self._parallel(plan, progress, deadline)
                    finally:
                        self._hasher.close()
                    digest = self._assemble(plan, self._hasher)
                self.state.unlink(missing_ok=True)
                return digest, progress.fetched
            except (RemoteChanged, _NoRanges) as exc:
                restarts += 1
                self._discard(plan)
                if restarts > 2:
                    raise FetchError(f"download of {self.display} keeps restarting: {exc or 'server ignores Range'}") from None
                if isinstance(exc, _NoRanges):
                    self.retry = RetryPolicy(**{**self.retry.__dict__, "parallel": 1})
                stat = self.stat(deadline)

    def _parallel(self, plan: _Plan, progress: _Progress, deadline: float) -> None:
        self.stop.clear()
        with ThreadPoolExecutor(len(plan.segments), thread_name_prefix="lora-fetch") as pool:
            # the first range is hashed as it streams; the others stay in the page cache for _assemble
            futures = [pool.submit(self._segment, plan, i, progress, self._hasher if i == 0 else None, deadline)
                       for i in range(len(plan.segments))]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                self.stop.set()
                raise
        if self.cancel():
            raise FetchCancelled(f"download of {self.display} cancelled")

    def _assemble(self, plan: _Plan, first: _StreamHasher) -> str:
        """Append ranges 1… to range 0's file, finishing the hash that range 0 started."""
        digest = first.finished()  # range 0 was hashed while streaming
        with open(self.temp, "r+b") as out:  # copy_file_range refuses O_APPEND targets
            pos = self.temp.stat().st_size
            for i in range(1, len(plan.segments)):
                part = self._segment_path(i)
                with open(part, "rb") as src:
                    while block := src.read(CHUNK):
                        digest.update(block)
                    remaining, offset = part.stat().st_size, 0
                    while remaining > 0:
                        n = os.copy_file_range(src.fileno(), out.fileno(), remaining, offset_src=offset, offset_dst=pos)
                        if n == 0:
                            raise FetchError(f"could not assemble the ranges of {self.display}")
                        remaining -= n
                        offset += n
                        pos += n
                part.unlink()
        return digest.hexdigest()


# what a failed connection means to a person, by the words its exception chain holds (urllib3,
# botocore and the socket layer each name the same causes their own way), first match wins
_FAILURES = (
    (("connection refused", "errno 111"), "host unreachable (connection refused)"),
    (("name or service not known", "failed to resolve", "nodename nor servname", "name resolution",
      "temporary failure in name", "getaddrinfo"), "host not found (DNS)"),
    (("no route to host", "network is unreachable", "errno 113", "errno 101"), "host unreachable (no route)"),
    (("timed out", "timeout"), "timed out"),
    (("connection reset", "connection aborted", "incompleteread", "protocolerror", "connection broken",
      "remote end closed"), "the connection was cut"),
    (("certificate", "ssl"), "TLS error (certificate or handshake)"),
    (("could not connect to the endpoint",), "S3 endpoint unreachable"),
)


def _read_small(body: Body, n: int) -> bytes:
    """``read1`` for a body that has none: at most a small chunk, so a stall loses little."""
    return body.read(min(n, SMALL_CHUNK))


def _reason(exc: BaseException) -> str:
    """A network error in one short line a person can act on ("host unreachable (connection
    refused)"), else the error's own first line; never a bare exception class name."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)  # type: ignore[assignment]
        if not isinstance(current, BaseException):
            current = None
    words = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    for needles, meaning in _FAILURES:
        if any(needle in words for needle in needles):
            return meaning
    text = str(exc.args[0]) if exc.args else ""
    return (text or type(exc).__name__.replace("Error", " error").strip())[:200]


def _shutdown(body: Any) -> None:
    """Wake a thread blocked reading ``body`` (urllib3 or botocore response) by shutting its socket."""
    raw = getattr(body, "_raw_stream", body)  # botocore wraps a urllib3 response
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _NoRanges(Exception):
    """A ranged request came back whole: fall back to a single stream."""


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _extension(source: Source, name: str | None, policy: FetchPolicy) -> str:
    for candidate in (name, source.filename):
        if candidate and "." in candidate:
            ext = Path(candidate).suffix.lower()
            if ext in (SAFE_EXTENSION, *PICKLE_EXTENSIONS):
                return check_extension(candidate, policy.allow_pickle)
    return SAFE_EXTENSION  # e.g. Civitai download URLs: the content is checked instead


def fetch_lora(
    source: str | Source,
    store: LoraStore,
    sha256: str | None = None,
    name: str | None = None,
    policy: FetchPolicy | None = None,
    retry: RetryPolicy = RetryPolicy(),
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    pin: bool = False,
    on_retry: RetryCallback | None = None,
) -> FetchResult:
    """Return a verified local copy of ``source`` from the cache, downloading it if needed.

    ``sha256`` (when given) is verified; ``name`` links the file into the store's link folder
    as ``name`` (``.safetensors`` appended when it has no extension).
    """
    policy = policy or FetchPolicy.configured()
    src = parse_source(source) if isinstance(source, str) else source
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _SHA256.match(sha256):
            raise FetchError(f"sha256 must be 64 hex digits, got {sha256!r}")
    ext = _extension(src, name, policy)
    link_name = None
    if name:
        link_name = safe_name(name if Path(name).suffix.lower() in (SAFE_EXTENSION, *PICKLE_EXTENSIONS) else name + ext)
    warnings: list[str] = []
    version = store.source_version(src.identity) if sha256 is None else None
    if version is not None:
        warnings += _revalidate(src, store, policy, version)  # no hash to trust: is the cached copy still what the source serves?
    hit = store.lookup(sha256=sha256, identity=None if sha256 else src.identity, record_miss=False)
    if hit is None:
        with store.single_flight(src.identity, cancel):  # also owns the source's temporary file
            hit = store.lookup(sha256=sha256, identity=None if sha256 else src.identity)
            if hit is None:
                return _download(src, store, sha256, ext, link_name, policy, retry, progress, cancel, pin, on_retry)
    sha, path = hit
    if pin:
        store.pin(sha)
    link = store.link(link_name, sha) if link_name else None
    info = inspect_file(path, with_hash=False) if ext == SAFE_EXTENSION else None
    if info is not None:
        info.sha256 = sha
    size = path.stat().st_size
    if progress:
        progress(size, size)
    return FetchResult(path, sha, size, True, info, link, warnings)


def _revalidate(src: Source, store: LoraStore, policy: FetchPolicy, version: tuple[int | None, str | None]) -> list[str]:
    """Forget the cached copy of a source whose size or validator changed; an unreachable source keeps
    its copy, with a warning."""
    size, validator = version
    unreachable: tuple[type[BaseException], ...] = (*_transient_errors(), SourceError)
    try:
        stat = transport_for(src, policy).stat()
    except SourceRefused:
        raise
    except unreachable as exc:
        return [f"could not revalidate {src.display} ({exc}); using the cached copy"]
    if stat.size != size or (stat.validator or None) != (validator or None):
        store.forget_source(src.identity)
    return []


def _download(src: Source, store: LoraStore, sha256: str | None, ext: str, link_name: str | None, policy: FetchPolicy,
              retry: RetryPolicy, progress: ProgressCallback | None, cancel: CancelCheck | None, pin: bool,
              on_retry: RetryCallback | None = None) -> FetchResult:
    key = hashlib.sha256(src.identity.encode()).hexdigest()[:32]
    temp = store.temp_path(key)
    download = _Download(transport_for(src, policy), temp, retry, progress, cancel, src.display, on_retry)
    stat = download.stat(time.monotonic() + retry.max_total)
    warnings = [w] if (w := policy.limits.check(stat.size, f"LoRA {src.display}")) else []
    store.reserve(key, stat.size)
    try:
        return _verify_and_add(src, store, download, stat, key, sha256, ext, link_name, pin, warnings)
    finally:
        store.release(key)  # a no-op once added; a kept partial counts on its own from now on


def _verify_and_add(src: Source, store: LoraStore, download: "_Download", stat: RemoteStat, key: str,
                    sha256: str | None, ext: str, link_name: str | None, pin: bool, warnings: list[str]) -> FetchResult:
    temp = download.temp
    digest, fetched = download.run(stat)
    actual = temp.stat().st_size
    try:
        if actual != stat.size:
            raise IntegrityError(f"{src.display}: got {actual} bytes, expected {stat.size}")
        if sha256 and digest != sha256:
            raise IntegrityError(f"{src.display}: SHA-256 is {digest}, expected {sha256}")
        info = None
        if ext == SAFE_EXTENSION:
            try:
                info = inspect_file(temp, with_hash=False)
            except InvalidLoraFile as exc:
                raise IntegrityError(f"{src.display} is not a valid safetensors file: {exc}") from None
            info.sha256 = digest
            info.source = src.display
            info.warnings = warnings + info.warnings
        _fsync(temp)
    except IntegrityError:
        store.discard_partial(key)  # wrong bytes are never resumed
        raise
    path = store.add(temp, digest, actual, ext, src.display, src.identity, reservation=key, validator=stat.validator)
    if pin:
        store.pin(digest)
    link = store.link(link_name, digest) if link_name else None
    return FetchResult(path, digest, actual, False, info, link, warnings, fetched)
