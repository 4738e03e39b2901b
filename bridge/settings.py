"""Every setting of comfyui-lora-bridge, read from the environment once (``Settings.from_env``).

This module is the only place that reads ``LORA_BRIDGE_*`` (and the few foreign variables
we honour: ``COMFYUI_DIR``, ``HF_TOKEN``, ``CIVITAI_TOKEN``, the S3 endpoint variables).
Values are trimmed; a value that does not parse is a ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import ConfigError

MIB = 1024 * 1024


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())


def _text(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (never from a command line)."""
    value = _text(env, name)
    path = _text(env, f"{name}_FILE")
    if value and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: {exc.strerror}") from None
    return value


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum or value != value or value in (float("inf"),):
        raise ConfigError(f"{name}={raw!r} must be a finite number >= {minimum:g}")
    return value


def _delays(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated seconds (``2,4,8``); empty: ``default``; ``0`` alone: no retries."""
    raw = _list(env, name)
    if not raw:
        return default
    try:
        values = tuple(float(v) for v in raw)
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r}: give seconds separated by commas, e.g. 2,4,8") from None
    if any(not 0 <= v <= 3600 for v in values):
        raise ConfigError(f"{name}={env[name]!r}: each delay must be between 0 and 3600 seconds")
    return () if values == (0.0,) else values


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r}: use 1/true/yes or 0/false/no")


def _http_auth(env: Mapping[str, str]) -> dict[str, str]:
    """``LORA_BRIDGE_HTTP_AUTH`` (``{"host pattern": "Authorization value"}``) plus HF and Civitai tokens."""
    table: dict[str, str] = {}
    raw = env.get("LORA_BRIDGE_HTTP_AUTH", "").strip()
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
            raise ConfigError("LORA_BRIDGE_HTTP_AUTH must be a JSON object {\"host pattern\": \"Authorization value\"}")
        table.update(parsed)
    if hf := _text(env, "HF_TOKEN"):
        table.setdefault("huggingface.co", f"Bearer {hf}")
        table.setdefault("*.huggingface.co", f"Bearer {hf}")
    if civitai := _text(env, "CIVITAI_TOKEN", "CIVITAI_API_KEY"):
        table.setdefault("civitai.com", f"Bearer {civitai}")
        table.setdefault("*.civitai.com", f"Bearer {civitai}")
    return table


def _json_object(env: Mapping[str, str], name: str, shape: str, nested: bool = False) -> dict[str, object]:
    """A JSON object in ``name`` (``nested``: each value an object too); ``shape`` shows it in the error."""
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or (nested and not all(isinstance(v, dict) for v in parsed.values())):
        raise ConfigError(f"{name} must be a JSON object {shape}")
    return parsed


@dataclass(frozen=True)
class Settings:
    """The configuration of the bridge, the CLI and the node pack (see the README's table)."""

    cache_dir: Path
    store_dir: Path | None = None  # LORA_BRIDGE_STORE; see ``store_path``
    comfyui_dir: Path | None = None
    link_dir: Path | None = None
    disk_budget_bytes: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_buckets: tuple[str, ...] = ()
    local_roots: tuple[Path, ...] = ()
    allow_pickle: bool = False
    warn_bytes: int = 500 * MIB
    max_bytes: int = 4096 * MIB
    s3_endpoint: str | None = None
    http_auth: dict[str, str] = field(default_factory=dict)
    pod_route_token: str | None = None  # LORA_BRIDGE_TOKEN: what the pack's routes require
    pod_token: str | None = None  # LORA_BRIDGE_POD_TOKEN: what the bridge sends to pods
    api_keys: tuple[str, ...] = ()
    webhook_secret: str | None = None
    upload_dir: Path | None = None
    upload_bucket: str | None = None
    output_bucket: str | None = None
    cost_per_hour: float = 0.0
    service_url: str = "http://127.0.0.1:8288"
    service_api_key: str | None = None
    preload: tuple[str, ...] = ()
    memory_entries: int = 5
    memory_bytes: int = 4096 * MIB
    stream_heartbeat_s: float = 15.0
    pod_facts_ttl_s: float = 60.0
    templates_dir: Path | None = None  # LORA_BRIDGE_TEMPLATES_DIR: a team's templates, before the shipped ones
    retry_delays: tuple[float, ...] = (2.0, 4.0, 8.0)  # LORA_BRIDGE_RETRY_DELAYS: waits before each retry of a job's pod
    fetch_retry_delays: tuple[float, ...] = (2.0, 4.0, 8.0)  # LORA_BRIDGE_FETCH_RETRY_DELAYS: waits before each retry of a download
    lease_s: float = 15.0  # LORA_BRIDGE_LEASE_S: how long a replica holds its jobs without a heartbeat
    brand_store: str | None = None  # LORA_BRIDGE_BRAND_STORE (seed: LORA_BASE_DIR): {brand_id}/style.safetensors…
    preload_brands: tuple[str, ...] = ()  # LORA_PRELOAD_BRANDS: brands whose LoRAs the pods load at start
    trainer_bucket: str | None = None  # LORA_BRIDGE_TRAINER_BUCKET: where the trainer's s3Key points
    trainer_secret: str | None = None  # LORA_BRIDGE_TRAINER_SECRET: signs the trainer's webhook
    compat_defaults: dict[str, dict[str, object]] = field(default_factory=dict)  # LORA_BRIDGE_COMPAT_DEFAULTS
    preview_params: dict[str, object] = field(default_factory=dict)  # LORA_BRIDGE_PREVIEW_PARAMS: the console's sweeps
    max_queued: int = 1000  # LORA_BRIDGE_MAX_QUEUED: jobs waiting for a pod before new ones are refused (429 queue_full)
    job_retention_s: float = 7 * 86400  # LORA_BRIDGE_JOB_RETENTION_S: a job's expires_at (Comfy API v2), from its creation
    queue_timeout_s: float = 900.0  # LORA_BRIDGE_QUEUE_TIMEOUT_S: how long a job waits for a usable pod before it fails
    registration_token: str | None = None  # LORA_BRIDGE_REGISTRATION_TOKEN: pods announce themselves with it (both sides)
    register_url: str | None = None  # LORA_BRIDGE_REGISTER_URL (pack): the bridge this pod announces itself to
    pod_url: str | None = None  # LORA_BRIDGE_POD_URL (pack): how the bridge reaches this pod (default: its address)
    pod_labels: tuple[str, ...] = ()  # LORA_BRIDGE_POD_LABELS (pack): the labels this pod announces
    heartbeat_s: float = 10.0  # LORA_BRIDGE_HEARTBEAT_S (pack): seconds between heartbeats; three missed: lost
    pods_dns: tuple[str, ...] = ()  # LORA_BRIDGE_PODS_DNS: name:port, every address of the name is a pod
    dns_interval_s: float = 10.0  # LORA_BRIDGE_DNS_INTERVAL_S: how often those names are resolved again
    pod_forget_s: float = 600.0  # LORA_BRIDGE_POD_FORGET_S: a lost announced or discovered pod is removed after this

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        cache = Path(_text(env, "LORA_BRIDGE_CACHE") or Path(_text(env, "XDG_CACHE_HOME") or Path.home() / ".cache")
                     / "comfyui-lora-bridge")
        budget_gb = _number(env, "LORA_BRIDGE_DISK_BUDGET_GB", 0.0)
        comfyui = _text(env, "COMFYUI_DIR")
        link = _text(env, "LORA_BRIDGE_LINK_DIR")
        upload_dir = _text(env, "LORA_BRIDGE_UPLOAD_DIR")
        return cls(
            cache_dir=cache,
            store_dir=Path(store) if (store := _text(env, "LORA_BRIDGE_STORE")) else None,
            comfyui_dir=Path(comfyui).expanduser() if comfyui else None,
            link_dir=Path(link) if link else None,
            disk_budget_bytes=int(budget_gb * 1024**3) if budget_gb > 0 else None,
            allowed_hosts=_list(env, "LORA_BRIDGE_ALLOWED_HOSTS"),
            allowed_buckets=_list(env, "LORA_BRIDGE_ALLOWED_BUCKETS"),
            local_roots=tuple(Path(p) for p in _list(env, "LORA_BRIDGE_LOCAL_ROOTS")),
            allow_pickle=_flag(env, "LORA_BRIDGE_ALLOW_PICKLE"),
            warn_bytes=int(_number(env, "LORA_BRIDGE_WARN_MB", 500) * MIB),
            max_bytes=int(_number(env, "LORA_BRIDGE_MAX_MB", 4096) * MIB),
            s3_endpoint=_text(env, "LORA_BRIDGE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            http_auth=_http_auth(env),
            pod_route_token=_secret(env, "LORA_BRIDGE_TOKEN"),
            pod_token=_secret(env, "LORA_BRIDGE_POD_TOKEN"),
            api_keys=tuple(k.strip() for k in (_secret(env, "LORA_BRIDGE_API_KEYS") or "").split(",") if k.strip()),
            webhook_secret=_secret(env, "LORA_BRIDGE_WEBHOOK_SECRET"),
            upload_dir=Path(upload_dir) if upload_dir else None,
            upload_bucket=_text(env, "LORA_BRIDGE_UPLOAD_BUCKET"),
            output_bucket=_text(env, "LORA_BRIDGE_OUTPUT_BUCKET"),
            cost_per_hour=_number(env, "LORA_BRIDGE_COST_PER_HOUR", 0.0),
            service_url=(_text(env, "LORA_BRIDGE_URL") or "http://127.0.0.1:8288").rstrip("/"),
            service_api_key=_text(env, "LORA_BRIDGE_API_KEY"),
            preload=_list(env, "LORA_BRIDGE_PRELOAD"),
            memory_entries=int(_number(env, "LORA_BRIDGE_MEMORY_ENTRIES", 5, minimum=1)),
            memory_bytes=int(_number(env, "LORA_BRIDGE_MEMORY_MB", 4096, minimum=1) * MIB),
            stream_heartbeat_s=_number(env, "LORA_BRIDGE_STREAM_HEARTBEAT_S", 15.0, minimum=0.1),
            pod_facts_ttl_s=_number(env, "LORA_BRIDGE_POD_FACTS_TTL_S", 60.0, minimum=0.0),
            retry_delays=_delays(env, "LORA_BRIDGE_RETRY_DELAYS", (2.0, 4.0, 8.0)),
            fetch_retry_delays=_delays(env, "LORA_BRIDGE_FETCH_RETRY_DELAYS", (2.0, 4.0, 8.0)),
            lease_s=_number(env, "LORA_BRIDGE_LEASE_S", 15.0, minimum=1.0),
            brand_store=_text(env, "LORA_BRIDGE_BRAND_STORE", "LORA_BASE_DIR"),
            preload_brands=_list(env, "LORA_PRELOAD_BRANDS"),
            trainer_bucket=_text(env, "LORA_BRIDGE_TRAINER_BUCKET"),
            trainer_secret=_secret(env, "LORA_BRIDGE_TRAINER_SECRET"),
            # the parameters the seed-compatible routes fix for each template they use (its checkpoint, model files…)
            compat_defaults=_json_object(env, "LORA_BRIDGE_COMPAT_DEFAULTS", '{"template": {"param": value}}',  # type: ignore[arg-type]
                                         nested=True),
            # template parameters of every strength sweep the console runs (a checkpoint, steps, size…)
            preview_params=_json_object(env, "LORA_BRIDGE_PREVIEW_PARAMS", '{"param": value}'),
            max_queued=int(_number(env, "LORA_BRIDGE_MAX_QUEUED", 1000, minimum=1)),
            job_retention_s=_number(env, "LORA_BRIDGE_JOB_RETENTION_S", 7 * 86400, minimum=60),
            queue_timeout_s=_number(env, "LORA_BRIDGE_QUEUE_TIMEOUT_S", 900.0),
            registration_token=_secret(env, "LORA_BRIDGE_REGISTRATION_TOKEN"),
            register_url=(_text(env, "LORA_BRIDGE_REGISTER_URL") or "").rstrip("/") or None,
            pod_url=(_text(env, "LORA_BRIDGE_POD_URL") or "").rstrip("/") or None,
            pod_labels=_list(env, "LORA_BRIDGE_POD_LABELS"),
            heartbeat_s=_number(env, "LORA_BRIDGE_HEARTBEAT_S", 10.0, minimum=0.2),
            pods_dns=_list(env, "LORA_BRIDGE_PODS_DNS"),
            dns_interval_s=_number(env, "LORA_BRIDGE_DNS_INTERVAL_S", 10.0, minimum=0.2),
            pod_forget_s=_number(env, "LORA_BRIDGE_POD_FORGET_S", 600.0),
            templates_dir=Path(templates).expanduser() if (templates := _text(env, "LORA_BRIDGE_TEMPLATES_DIR")) else None,
        )

    def store_path(self, models_dir: Path | None = None) -> Path:
        """The LoRA disk cache: ``LORA_BRIDGE_STORE``, else ``<ComfyUI models>/lora_bridge_store``
        on a pod (``models_dir``), else ``<cache>/store``."""
        if self.store_dir is not None:
            return self.store_dir
        return models_dir / "lora_bridge_store" if models_dir is not None else self.cache_dir / "store"

    @property
    def local_store_dir(self) -> Path:
        """Where the service keeps uploaded LoRAs when no upload bucket is set."""
        return self.upload_dir or self.cache_dir / "bridge-local-store"

    def cache_root(self) -> Path:
        """The cache folder, created on first use."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir


def secret_named(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The secret in the environment variable ``name`` (or the file ``name_FILE`` names): a pod's token given by
    reference (``token_ref``), so that only the variable's name is ever stored."""
    return _secret(os.environ if env is None else env, name)


@functools.lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read once (the pod, the CLI and the service call this)."""
    return Settings.from_env()


def cache_root() -> Path:
    """Folder for reusable local state (the ComfyUI copy, generated weights, the default database)."""
    return settings().cache_root()
