"""A loopback HTTP file server that misbehaves on request: for fetch tests and benchmarks.

It serves registered byte strings or files with ``ETag``, ``Range`` and ``If-Range`` support,
and per-path faults: answer errors first, cut the connection at given offsets, stall, ignore
``Range``, serve wrong bytes, or change the object after some requests. Every request is
recorded (range asked, status, bytes sent) so tests can assert what was fetched twice.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    errors: list[int] = field(default_factory=list)  # statuses for the next requests, consumed in order
    cut_at: list[int] = field(default_factory=list)  # absolute offsets; each cuts one response, consumed
    stall_at: int | None = None  # offset where the response pauses for stall_seconds (once)
    stall_seconds: float = 0.0
    ignore_range: bool = False
    wrong_bytes: bool = False
    change_after: int | None = None  # after this many requests, serve ``changed`` instead
    changed: bytes | None = None


@dataclass
class Served:
    data: bytes | None = None
    path: Path | None = None
    faults: Faults = field(default_factory=Faults)
    requests: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    @property
    def etag(self) -> str:
        if self.data is not None:
            return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'
        st = self.path.stat()  # type: ignore[union-attr]
        return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


@dataclass
class RequestLog:
    path: str
    range: str | None
    status: int
    sent: int = 0  # bytes handed to the socket, counted before each write


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-body is what these tests do


class FaultyFileServer:
    """``with FaultyFileServer() as srv: srv.add('/x.safetensors', data); srv.url('/x.safetensors')``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS with this server context (``self_signed_tls`` makes one)."""
        self.files: dict[str, Served] = {}
        self.redirects: dict[str, str] = {}
        self.headers_seen: list[tuple[str, dict[str, str]]] = []
        self.log: list[RequestLog] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.scheme = "https" if tls else "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyFileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes | None = None, faults: Faults | None = None, file: Path | None = None) -> Served:
        served = Served(data, file, faults or Faults())
        self.files[path] = served
        return served

    def bytes_sent(self, path: str) -> int:
        return sum(r.sent for r in self.log if r.path == path)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        served = self.files.get(path)
        rng = h.headers.get("Range")
        self.headers_seen.append((path, dict(h.headers)))
        if path in self.redirects:
            self.log.append(RequestLog(path, rng, 302))
            h.send_response(302)
            h.send_header("Location", self.redirects[path])
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if served is None:
            return self._reply(h, path, rng, 404, b"not found")
        with self.lock:
            served.requests += 1
            f = served.faults
            status = f.errors.pop(0) if f.errors else None
            if f.change_after is not None and served.requests > f.change_after and f.changed is not None:
                served.data, served.path, f.changed = f.changed, None, None
        if status:
            return self._reply(h, path, rng, status, b"injected error")
        size, etag = served.size, served.etag
        start, end = 0, size - 1
        partial = False
        if rng and not f.ignore_range and rng.startswith("bytes="):
            if_range = h.headers.get("If-Range")
            if if_range is None or if_range == etag:
                a, _, b = rng[6:].partition("-")
                start = int(a) if a else 0
                end = min(int(b), size - 1) if b else size - 1
                partial = True
                if start >= size:
                    return self._reply(h, path, rng, 416, b"")
        h.send_response(206 if partial else 200)
        h.send_header("Content-Length", str(end - start + 1))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "none" if f.ignore_range else "bytes")
        if partial:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        entry = RequestLog(path, rng, 206 if partial else 200)
        self.log.append(entry)
        self._send_body(h, served, start, end + 1, entry)

    def _send_body(self, h: BaseHTTPRequestHandler, served: Served, start: int, stop: int, entry: RequestLog) -> None:
        f = served.faults
        with self.lock:
            cut = next((c for c in sorted(f.cut_at) if start < c < stop), None)
            if cut is not None:
                f.cut_at.remove(cut)
            stall = f.stall_at if f.stall_at is not None and start <= f.stall_at < stop else None
            if stall is not None:
                f.stall_at = None
        limit = cut if cut is not None else stop
        try:
            if served.path is not None and not f.wrong_bytes and stall is None:
                with open(served.path, "rb") as src:
                    h.wfile.flush()
                    entry.sent += limit - start
                    h.connection.sendfile(src, offset=start, count=limit - start)
            else:
                pos = start
                while pos < limit:
                    if stall is not None and pos >= stall:
                        time.sleep(f.stall_seconds)
                        stall = None
                    n = min(1 << 16, limit - pos, (stall - pos) if stall is not None and stall > pos else 1 << 16)
                    block = self._read(served, pos, n)
                    if f.wrong_bytes:
                        block = bytes(b ^ 0x5A for b in block)
                    entry.sent += n
                    h.wfile.write(block)
                    pos += n
        except (BrokenPipeError, ConnectionResetError):
            return
        if cut is not None:
            h.close_connection = True
            try:
                h.wfile.flush()
                h.connection.shutdown(2)
            except OSError:
                pass

    @staticmethod
    def _read(served: Served, pos: int, n: int) -> bytes:
        if served.data is not None:
            return served.data[pos : pos + n]
        with open(served.path, "rb") as src:  # type: ignore[arg-type]
            src.seek(pos)
            return src.read(n)

    def _reply(self, h: BaseHTTPRequestHandler, path: str, rng: str | None, status: int, body: bytes) -> None:
        self.log.append(RequestLog(path, rng, status))
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def self_signed_tls(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and the certificate's file
    (what a client trusts: ``SSL_CERT_FILE``)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


def write_random_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (written in 64 MB blocks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n
    os.sync()
    return path
