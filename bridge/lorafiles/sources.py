"""Where LoRA bytes come from: local files, ``file://``, ``http(s)://`` and ``s3://`` sources.

Each source is checked against a ``FetchPolicy`` before any byte moves: host and bucket
allowlists, link-local and cloud-metadata addresses always refused, private addresses only
when allowlisted by name, no credentials inside URLs, local files only under allowed roots.
Transports serve byte ranges for inspection and resumable, verified downloads (``fetch.py``).
"""

from __future__ import annotations

import fnmatch
import importlib
import ipaddress
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping, Protocol, Sequence
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

from ..errors import LoraBridgeError
from .validate import SizeLimits

if TYPE_CHECKING:
    from ..settings import Settings

_SECRET_PARAMS = ("x-amz-", "signature", "token", "sig", "key-pair-id", "policy", "expires", "se", "sp", "sv", "sr", "skoid")
_METADATA_IPS = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


class SourceError(LoraBridgeError):
    """A source that cannot be used: malformed, refused by policy, missing, or unreachable."""


class SourceRefused(SourceError):
    """The policy refuses this source (host, bucket, address or path not allowed)."""


class RemoteChanged(SourceError):
    """The remote object changed (ETag or size) while we were reading it."""


@dataclass(frozen=True)
class FetchPolicy:
    """What sources may be read, how big files may be, and which hosts get which credentials."""

    allowed_hosts: tuple[str, ...] = ()  # fnmatch patterns; empty: any public host
    allowed_buckets: tuple[str, ...] = ()  # fnmatch patterns; empty: any bucket
    local_roots: tuple[Path, ...] = ()  # local files must be under one of these
    allow_pickle: bool = False
    limits: SizeLimits = field(default_factory=SizeLimits)
    s3_endpoint: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    http_auth: Mapping[str, str] = field(default_factory=dict)  # host pattern -> Authorization value

    @classmethod
    def from_settings(cls, settings: "Settings", **overrides: Any) -> "FetchPolicy":
        values: dict[str, Any] = dict(
            allowed_hosts=settings.allowed_hosts, allowed_buckets=settings.allowed_buckets,
            local_roots=settings.local_roots, allow_pickle=settings.allow_pickle,
            limits=SizeLimits(warn_bytes=settings.warn_bytes, max_bytes=settings.max_bytes),
            s3_endpoint=settings.s3_endpoint, http_auth=dict(settings.http_auth),
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def configured(cls, **overrides: Any) -> "FetchPolicy":
        """The policy of this process's settings (``LORA_BRIDGE_*``), with ``overrides``."""
        from ..settings import settings

        return cls.from_settings(settings(), **overrides)

    def host_allowed(self, host: str) -> bool:
        return any(fnmatch.fnmatch(host.lower(), p.lower()) for p in self.allowed_hosts)


def redact_url(url: str) -> str:
    """A URL safe for logs: no user info and no query string (presigned signatures live there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # malformed: show only the scheme
        return url.split("://", 1)[0][:20] + "://…"
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?…" if parts.query else "")


def carries_credentials(text: str) -> bool:
    """True for an http(s) URL with a query string: presigned signatures and tokens live there, so
    such a URL must not enter a workflow graph, a history, a log or a listing."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return True  # malformed: treat it as secret rather than show it
    return parts.scheme.lower() in ("http", "https") and bool(parts.query)


@dataclass(frozen=True)
class Source:
    """A parsed source. ``uri`` may hold secrets (presigned query): show ``display`` instead."""

    kind: str  # "local", "http" or "s3"
    uri: str
    path: Path | None = None
    bucket: str | None = None
    key: str | None = None

    @property
    def display(self) -> str:
        return redact_url(self.uri) if self.kind == "http" else self.uri

    @property
    def identity(self) -> str:
        """Stable identity for the cache's source index (secrets removed from the query)."""
        if self.kind != "http":
            return self.uri if self.kind == "s3" else str(self.path)
        parts = urlsplit(self.uri)
        query = [(k, v) for k, v in parse_qsl(parts.query) if not k.lower().startswith(_SECRET_PARAMS)]
        return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or ''}{parts.path}?{urlencode(sorted(query))}"

    @property
    def filename(self) -> str:
        """The last path segment (a default human name)."""
        if self.kind == "s3":
            return (self.key or "").rsplit("/", 1)[-1]
        if self.kind == "local":
            return self.path.name if self.path else ""
        return unquote(urlsplit(self.uri).path.rsplit("/", 1)[-1])


def parse_source(text: str) -> Source:
    """Parse ``s3://bucket/key``, ``http(s)://…``, ``file://…`` or a local path."""
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise SourceError("empty or invalid source")
    text = text.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise SourceError(f"invalid source {redact_url(text)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or not key:
            raise SourceError(f"invalid S3 source {text!r}: expected s3://bucket/key")
        return Source("s3", f"s3://{bucket}/{key}", bucket=bucket, key=key)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise SourceError(f"invalid URL {redact_url(text)!r}: no host")
        if parts.username or parts.password:
            raise SourceRefused("credentials inside URLs are refused; configure LORA_BRIDGE_HTTP_AUTH instead")
        return Source("http", text)
    if scheme == "file":
        return Source("local", text, path=Path(unquote(parts.path)))
    if scheme and len(scheme) > 1:
        raise SourceError(f"unsupported source scheme {scheme!r}: use s3://, https://, http://, file:// or a path")
    return Source("local", text, path=Path(text))


def _check_address(host: str, port: int, policy: FetchPolicy) -> None:
    if host.lower().rstrip(".") in _METADATA_HOSTS:
        raise SourceRefused(f"host {host} is a cloud metadata endpoint; refused")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise SourceError(f"cannot resolve host {host}: {exc}") from None
    explicit = policy.host_allowed(host)
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is the metadata address too
        if ip in _METADATA_IPS or ip.is_link_local:
            raise SourceRefused(f"host {host} resolves to {ip} (link-local or metadata address); refused")
        if (ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_unspecified or ip.is_multicast) and not explicit:
            raise SourceRefused(
                f"host {host} resolves to the non-public address {ip}; add it to LORA_BRIDGE_ALLOWED_HOSTS to allow"
            )


def check_source(source: Source, policy: FetchPolicy) -> None:
    """Raise ``SourceRefused`` unless ``policy`` allows ``source``."""
    if source.kind == "http":
        parts = urlsplit(source.uri)
        host = parts.hostname or ""
        if policy.allowed_hosts and not policy.host_allowed(host):
            raise SourceRefused(f"host {host} is not in the allowed hosts {list(policy.allowed_hosts)}")
        _check_address(host, parts.port or (443 if parts.scheme == "https" else 80), policy)
    elif source.kind == "s3":
        if policy.allowed_buckets and not any(fnmatch.fnmatch(source.bucket or "", p) for p in policy.allowed_buckets):
            raise SourceRefused(f"bucket {source.bucket} is not in the allowed buckets {list(policy.allowed_buckets)}")
    else:
        assert source.path is not None
        try:
            resolved = source.path.expanduser().resolve()
        except RuntimeError:  # "~name" of a user this machine does not know
            raise SourceError(f"local path {source.path} cannot be resolved") from None
        if not any(resolved.is_relative_to(root.expanduser().resolve()) for root in policy.local_roots):
            raise SourceRefused(f"local file {source.path} is outside the allowed folders (LORA_BRIDGE_LOCAL_ROOTS)")


def auth_header(host: str, policy: FetchPolicy) -> dict[str, str]:
    """Authorization for ``host`` from the policy's table (never from the URL)."""
    host = host.lower()
    for pattern, value in policy.http_auth.items():
        if fnmatch.fnmatch(host, pattern.lower()):
            return {"Authorization": value}
    return {}


@dataclass(frozen=True)
class RemoteStat:
    size: int
    validator: str | None  # ETag (or Last-Modified): changes when the object changes
    ranges: bool


class Body(Protocol):
    def read(self, n: int) -> bytes: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Byte access to one remote object."""

    def stat(self) -> RemoteStat: ...

    def open(self, start: int, end: int, validator: str | None) -> tuple[Body, bool]:
        """Bytes ``[start, end)``: (body, True), or (whole-object body, False) when the server ignored the range."""
        ...

    def read_range(self, start: int, length: int) -> bytes: ...


def _requirement(module: str, kind: str) -> Any:
    """``module``, or a ``SourceError`` saying how to install it (a pack installed without its
    requirements.txt still loads; only this kind of source needs the package)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SourceError(f"{kind} sources need the Python package {module.split('.')[0]!r}, which is not installed: "
                          f"pip install -r requirements.txt (the node pack's folder) into ComfyUI's environment") from None


class HttpTransport:
    """HTTP(S) through urllib3: manual redirects (each hop re-checked), no auth to other hosts."""

    _pool_lock = threading.Lock()
    _pool: Any = None

    def __init__(self, source: Source, policy: FetchPolicy, max_redirects: int = 5) -> None:
        urllib3 = _requirement("urllib3", "https://")
        self.source = source
        self.policy = policy
        self.max_redirects = max_redirects
        self.timeout = urllib3.Timeout(connect=policy.connect_timeout, read=policy.read_timeout)
        with HttpTransport._pool_lock:
            if HttpTransport._pool is None:
                HttpTransport._pool = urllib3.PoolManager(num_pools=16, maxsize=8, retries=False)
        self.pool = HttpTransport._pool

    def _request(self, headers: dict[str, str]) -> Any:
        import urllib3

        url = self.source.uri
        origin = urlsplit(url).hostname or ""
        for _ in range(self.max_redirects + 1):
            current = parse_source(url)
            check_source(current, self.policy)
            host = urlsplit(url).hostname or ""
            hdrs = dict(headers)
            if host == origin:
                hdrs.update(auth_header(host, self.policy))
            try:
                resp = self.pool.request("GET", url, headers=hdrs, preload_content=False, redirect=False,
                                         timeout=self.timeout, decode_content=False)
            except urllib3.exceptions.HTTPError as exc:
                raise ConnectionError(f"{redact_url(url)}: {type(exc).__name__}") from None
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                resp.drain_conn()
                resp.release_conn()
                url = urljoin(url, resp.headers["Location"])
                continue
            return resp
        raise SourceError(f"too many redirects from {self.source.display}")

    def _check_status(self, resp: Any) -> None:
        if resp.status >= 500 or resp.status == 429:
            resp.close()
            raise ConnectionError(f"{self.source.display} answered {resp.status}")
        if resp.status >= 400:
            resp.close()
            raise SourceError(f"{self.source.display} answered {resp.status}" + (" (not found)" if resp.status == 404 else ""))

    def stat(self) -> RemoteStat:
        resp = self._request({"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        try:
            self._check_status(resp)
            validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            if resp.status == 206 and "/" in resp.headers.get("Content-Range", ""):
                total = resp.headers["Content-Range"].rsplit("/", 1)[1]
                if total.isdigit():
                    return RemoteStat(int(total), validator, True)
            length = resp.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise SourceError(f"{self.source.display} does not say its size (no Content-Length)")
            return RemoteStat(int(length), validator, False)
        finally:
            if resp.status == 206:  # one byte: read it so the connection can be reused
                resp.drain_conn()
                resp.release_conn()
            else:
                resp.close()

    def open(self, start: int, end: int, validator: str | None) -> tuple[Body, bool]:
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}
        if validator:
            headers["If-Range"] = validator
        resp = self._request(headers)
        self._check_status(resp)
        current = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        if validator and current and current != validator:
            resp.close()
            raise RemoteChanged(f"{self.source.display} changed (validator {current} != {validator})")
        return resp, resp.status == 206

    def read_range(self, start: int, length: int) -> bytes:
        resp = self._request({"Range": f"bytes={start}-{start + length - 1}", "Accept-Encoding": "identity"})
        try:
            self._check_status(resp)
            if resp.status == 200 and start:  # server ignored Range: skip ahead
                _skip(resp, start)
            return _read_exact(resp, length)
        finally:
            resp.close()


class S3Transport:
    """``s3://`` through boto3 (standard credential chain, optional custom endpoint)."""

    def __init__(self, source: Source, policy: FetchPolicy) -> None:
        boto3 = _requirement("boto3", "s3://")
        from botocore.config import Config

        self.source = source
        config = Config(connect_timeout=policy.connect_timeout, read_timeout=policy.read_timeout,
                        retries={"max_attempts": 1}, s3={"addressing_style": "path"} if policy.s3_endpoint else None)
        self.client = boto3.client("s3", endpoint_url=policy.s3_endpoint, config=config)

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.source.bucket, Key=self.source.key, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "PreconditionFailed" or status == 412:
                raise RemoteChanged(f"{self.source.display} changed while downloading") from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise ConnectionError(f"{self.source.display}: {code or status}") from None
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                raise SourceError(f"{self.source.display} not found") from None
            raise SourceError(f"{self.source.display}: {code or status} {exc.response.get('Error', {}).get('Message', '')}".strip()) from None
        except BotoCoreError as exc:
            raise ConnectionError(f"{self.source.display}: {type(exc).__name__}") from None

    def stat(self) -> RemoteStat:
        head = self._call(self.client.head_object)
        return RemoteStat(int(head["ContentLength"]), head.get("ETag"), True)

    def open(self, start: int, end: int, validator: str | None) -> tuple[Body, bool]:
        kwargs: dict[str, Any] = {"Range": f"bytes={start}-{end - 1}"}
        if validator:
            kwargs["IfMatch"] = validator
        return self._call(self.client.get_object, **kwargs)["Body"], True

    def read_range(self, start: int, length: int) -> bytes:
        body = self._call(self.client.get_object, Range=f"bytes={start}-{start + length - 1}")["Body"]
        try:
            return _read_exact(body, length)
        finally:
            body.close()


class LocalTransport:
    def __init__(self, source: Source) -> None:
        assert source.path is not None
        self.path = source.path

    def stat(self) -> RemoteStat:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise SourceError(f"local file {self.path} does not exist") from None
        return RemoteStat(st.st_size, f"{st.st_mtime_ns}-{st.st_size}", True)

    def open(self, start: int, end: int, validator: str | None) -> tuple[Body, bool]:
        f = open(self.path, "rb")
        f.seek(start)
        return f, True

    def read_range(self, start: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return _read_exact(f, length)


def transport_for(source: Source, policy: FetchPolicy) -> Transport:
    """Check ``source`` against ``policy`` and return its transport."""
    check_source(source, policy)
    if source.kind == "http":
        return HttpTransport(source, policy)
    if source.kind == "s3":
        return S3Transport(source, policy)
    return LocalTransport(source)


class Digest(Protocol):
    def update(self, data: bytes, /) -> object: ...


def copy_whole(source: Source, policy: FetchPolicy, out: BinaryIO, digests: Sequence[Digest], limits: SizeLimits,
               what: str) -> int:
    """Read ``source`` whole, under ``policy`` (its size checked against ``limits`` first), into ``out``, updating
    each digest with every byte; the size read. A read that ends early is a ``SourceError``."""
    transport = transport_for(source, policy)
    stat = transport.stat()
    limits.check(stat.size, what)
    size = 0
    if stat.size:
        body, _ = transport.open(0, stat.size, stat.validator)
        try:
            while size < stat.size and (chunk := body.read(min(1 << 20, stat.size - size))):
                size += len(chunk)
                for digest in digests:
                    digest.update(chunk)
                out.write(chunk)
        finally:
            body.close()
    if size != stat.size:
        raise SourceError(f"{source.display}: the connection ended after {size} of {stat.size} bytes")
    return size


def _read_exact(body: Body, length: int) -> bytes:
    chunks, got = [], 0
    while got < length:
        block = body.read(min(length - got, 1 << 20))
        if not block:
            raise ConnectionError(f"connection closed after {got} of {length} bytes")
        chunks.append(block)
        got += len(block)
    return b"".join(chunks)


def _skip(body: Body, n: int) -> None:
    while n > 0:
        block = body.read(min(n, 1 << 20))
        if not block:
            raise ConnectionError("connection closed while skipping")
        n -= len(block)
