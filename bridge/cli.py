"""The ``lora-bridge`` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from .errors import LoraBridgeError
from .settings import cache_root, settings


def _demo(args: argparse.Namespace) -> int:
    from ..testing.demo import run_demo  # the [testing] toolkit: generated weights, a local ComfyUI

    run_demo(Path(args.out), steps=args.steps, size=args.size, strength=args.strength)
    return 0


def _cli_policy():  # the person at the keyboard may name their own local files
    from .lorafiles.sources import FetchPolicy

    return FetchPolicy.configured(local_roots=(Path("/"),))


def _inspect(args: argparse.Namespace) -> int:
    from .lorafiles.inspect import inspect_source

    info = inspect_source(args.source, _cli_policy(), with_hash=not args.no_hash)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
        return 0
    rows = [
        ("source", info.source), ("size", f"{info.size:,} bytes"), ("format", info.format + (" + DoRA" if info.dora else "")),
        ("base model", f"{info.family_name} ({info.family_source}: {info.family_evidence})"),
        ("targets", ", ".join(info.targets) or "-"), ("rank(s)", ", ".join(map(str, info.ranks)) or "-"),
        ("alpha(s)", ", ".join(f"{a:g}" for a in info.alphas) or "-"), ("dtypes", ", ".join(info.dtypes) or "-"),
        ("modules", str(info.modules)), ("trigger words", ", ".join(info.trigger_words) or "-"),
        ("sha256", info.sha256 or "-"), ("AutoV2", info.autov2 or "-"),
    ]
    rows += [(k, v if len(v) < 80 else v[:77] + "...") for k, v in sorted(info.metadata.items()) if k.startswith(("ss_base", "ss_network", "ss_output", "modelspec."))]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for warning in info.warnings:
        print(f"warning: {warning}")
    return 0


class ByteProgress:
    """A one-line download progress bar on stderr."""

    def __init__(self, label: str) -> None:
        self.label, self.start = label, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if not self.tty and pct // 10 == self.shown // 10 and done < total:
            return
        self.shown = pct
        rate = done / max(time.monotonic() - self.start, 1e-6) / 2**20
        bar = "#" * (pct // 5)
        end = "\n" if done >= total or not self.tty else ""
        print(f"\r{self.label} [{bar:<20}] {pct:3d}% {done / 2**20:8.1f} MiB {rate:7.1f} MiB/s", end=end, file=sys.stderr, flush=True)


def _store():
    from .lorafiles.store import LoraStore

    configured = settings()
    return LoraStore(configured.store_path(), configured.link_dir, configured.disk_budget_bytes)


def _fetch(args: argparse.Namespace) -> int:
    from .lorafiles.fetch import fetch_lora

    result = fetch_lora(args.source, _store(), sha256=args.sha256, name=args.name, policy=_cli_policy(),
                        progress=ByteProgress("fetch"), pin=args.pin)
    out = {"path": str(result.path), "sha256": result.sha256, "size": result.size, "cached": result.cached,
           "link": str(result.link) if result.link else None, "warnings": result.warnings,
           "family": result.info.family if result.info else None}
    print(json.dumps(out, indent=2))
    return 0


def _cache(args: argparse.Namespace) -> int:
    store = _store()
    if args.action == "ls":
        entries = store.entries()
        for e in entries:
            flags = ("pinned " if e.pinned else "") + ("in-use" if e.in_use else "")
            print(f"{e.sha256[:12]}  {e.size:>12,}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}  "
                  f"{', '.join(e.names) or '-':<30}  {e.source}  {flags}".rstrip())
        if not entries:
            print("(empty)")
    elif args.action == "stats":
        print(json.dumps(store.stats().to_dict(), indent=2))
    else:
        evicted = store.evict(args.sha256, include_pinned=args.include_pinned) if args.sha256 or args.all else store.enforce_budget()
        print(f"evicted {len(evicted)} file(s)")
    return 0


def _pool(args: argparse.Namespace):
    from .pods.pool import PodConfig, PodPool

    return PodPool([PodConfig(url, settings().pod_token) for url in args.pod], retry_delays=settings().retry_delays)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .api_client import ProgressPrinter
    from .pods.generation import describe_lora, parse_lora_arg, run_generation

    policy = _cli_policy()
    loras = [describe_lora(*parse_lora_arg(text), policy=policy) for text in args.lora]
    workflow = json.loads(Path(args.workflow).read_text()) if args.workflow else None
    show = ProgressPrinter()
    outcome = asyncio.run(run_generation(_pool(args), loras, template=args.template, params=dict(args.param),
                                         workflow=workflow, out_dir=Path(args.out), on_event=lambda e: show(e.type, e.data),
                                         apply_mode=args.mode))
    report = outcome.report
    print(json.dumps({"prompt_id": outcome.prompt_id, "pod": outcome.pod, "outputs": [str(p) for p in outcome.saved],
                      "applied": report.applied, "skipped": report.skipped, "trigger_words": report.trigger_words,
                      "warnings": report.warnings}, indent=2))
    return 0


def _pods(args: argparse.Namespace) -> int:
    import asyncio

    pool = _pool(args)
    for status in asyncio.run(pool.refresh(force=True)):
        print(json.dumps(status.summary()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import contextlib
    import logging
    import socket

    from aiohttp import web

    from .http.app import AccessLog, create_app
    from .jobs.database import Database
    from .jobs.uploads import LoraUploads
    from .lorafiles.sources import FetchPolicy
    from .pods.pool import PodConfig, PodPool

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    configured = settings()
    host = args.host
    if not configured.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        logging.warning("no API key configured (LORA_BRIDGE_API_KEYS): binding to 127.0.0.1 only, not %s", host)
        host = "127.0.0.1"
    elif not configured.api_keys:
        logging.warning("no API key configured (LORA_BRIDGE_API_KEYS): the API is open, on loopback only")
    pods = [PodConfig(url, configured.pod_token) for url in args.pod]
    with contextlib.ExitStack() as stack:
        if args.embedded_pod:
            from ..testing.server import LocalComfy  # the [testing] toolkit
            from ..testing.weights import cached_checkpoint

            store = configured.local_store_dir
            store.mkdir(parents=True, exist_ok=True)
            pod = LocalComfy(env={"LORA_BRIDGE_LOCAL_ROOTS": str(store)})
            (pod.models_dir("checkpoints") / "sd15-tiny.safetensors").symlink_to(cached_checkpoint("tiny"))
            stack.enter_context(pod)
            logging.info("embedded pod (CPU ComfyUI) at %s", pod.url)
            # it inherits LORA_BRIDGE_TOKEN, so that is what it requires from us
            pods.append(PodConfig(pod.url, configured.pod_route_token or configured.pod_token))
        if args.pods_dns:
            from .pods.discovery import parse_target

            for target in args.pods_dns:
                parse_target(target)  # a typo stops the start, not the first resolution
            configured = dataclasses.replace(configured, pods_dns=(*configured.pods_dns, *args.pods_dns))
        if not pods and not configured.pods_dns:
            logging.info("no pods yet: jobs wait (LORA_BRIDGE_QUEUE_TIMEOUT_S) until one joins (POST /v1/pods, "
                         "a pack with LORA_BRIDGE_REGISTER_URL, or --pods-dns)")
        db_url = args.db or f"sqlite:///{cache_root() / 'bridge.sqlite3'}"
        policy = FetchPolicy.from_settings(configured)
        uploads = LoraUploads(configured.local_store_dir, configured.upload_bucket, limits=policy.limits,
                              s3_endpoint=policy.s3_endpoint)
        replica = args.replica_id or f"{socket.gethostname()}:{args.port}"
        app = create_app(Database(db_url, replica, configured.lease_s), PodPool(pods, facts_ttl=configured.pod_facts_ttl_s, retry_delays=configured.retry_delays,
                                 wait_s=configured.queue_timeout_s), Path(args.outputs),
                         configured, policy, uploads)
        web.run_app(app, host=host, port=args.port, print=lambda *a: logging.info(*a), shutdown_timeout=10,
                    access_log_class=AccessLog)
    return 0


def _client():
    from .api_client import BridgeClient

    return BridgeClient.from_settings(settings())


def _generate(args: argparse.Namespace) -> int:
    from .api_client import ProgressPrinter

    request: dict = {"template": args.template, "params": dict(args.param), "lora_policy": args.policy}
    if args.character_id:
        request["character_id"] = args.character_id
    if args.brand_id:
        request["brand_id"] = args.brand_id
    if args.lora_id:
        request["loras"] = [{"lora_id": i} for i in args.lora_id]
    client = _client()
    job = client.json("POST", "/v1/generations", request)
    show = ProgressPrinter()
    for event in client.events(job["id"]):
        show(event.event, event.data)
    record = client.json("GET", f"/v1/generations/{job['id']}")
    print(json.dumps(record, indent=2))
    return 0 if record["status"] == "succeeded" else 1


def _train(args: argparse.Namespace) -> int:
    from .api_client import ProgressPrinter

    request: dict = {"name": args.name, "trigger_word": args.trigger_word, "checkpoint": args.checkpoint, "preset": args.preset,
                     "template": args.template}
    for key in ("character_id", "brand_id", "steps", "rank", "learning_rate", "batch_size", "resolution"):
        if getattr(args, key) is not None:
            request[key] = getattr(args, key)
    dataset = None
    if args.dataset.startswith("s3://") and args.dataset.endswith("/"):
        request["dataset_s3_prefix"] = args.dataset
    elif "://" in args.dataset:
        request["dataset_urls"] = [args.dataset]
    else:
        dataset = Path(args.dataset).read_bytes()
    client = _client()
    job = client.train(request, dataset)
    print(f"training {job['id']}: LoRA {job['lora']['id']} ({job['lora']['status']})", file=sys.stderr)
    show = ProgressPrinter()
    for event in client.events(job["id"]):
        show(event.event, event.data)
    record = client.json("GET", f"/v1/trainings/{job['id']}")
    print(json.dumps({"job": record, "lora": client.json("GET", f"/v1/loras/{job['lora']['id']}")}, indent=2))
    return 0 if record["status"] == "succeeded" else 1


def _loras(args: argparse.Namespace) -> int:
    if args.action == "add":
        fields = {"name": args.name, "source": args.source, "status": args.status}
        if args.character_id:
            fields["character_id"] = args.character_id
        if args.brand_id:
            fields["brand_id"] = args.brand_id
        if args.trigger_word:
            fields["trigger_word"] = args.trigger_word
        print(json.dumps(_client().json("POST", "/v1/loras", fields), indent=2))
    elif args.action == "ls":
        for item in _client().json("GET", "/v1/loras")["loras"]:
            print(f"{item['id']}  {item['status']:<10} {item['family'] or '-':<12} {item['owner_kind'] or '-'}:{item['owner_id'] or '-':<10} {item['name']}")
    else:
        print(json.dumps(_client().json("GET", f"/v1/loras/{args.id}"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-bridge", description="Fetch, cache and apply LoRAs on ComfyUI pods.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the bridge service with an embedded CPU pod: register a LoRA for a character, "
                                       "generate with and without it, stream progress, print the job records")
    demo.add_argument("--out", default="out/demo", help="folder for the two PNGs (default: out/demo)")
    demo.add_argument("--steps", type=int, default=4, help="sampling steps (default: 4)")
    demo.add_argument("--size", type=int, default=64, help="image width and height in pixels (default: 64)")
    demo.add_argument("--strength", type=float, default=1.0, help="LoRA strength for model and CLIP (default: 1.0)")
    demo.set_defaults(func=_demo)

    insp = sub.add_parser("inspect", help="describe a LoRA (local path, URL or s3://) from its header")
    insp.add_argument("source")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of local files (a full read)")
    insp.set_defaults(func=_inspect)

    fetch = sub.add_parser("fetch", help="download a LoRA into the verified disk cache")
    fetch.add_argument("source", help="s3://bucket/key, https://…, file://… or a path")
    fetch.add_argument("--sha256", help="expected SHA-256 (verified)")
    fetch.add_argument("--name", help="link the file as NAME(.safetensors) in LORA_BRIDGE_LINK_DIR")
    fetch.add_argument("--pin", action="store_true", help="never evict this file")
    fetch.set_defaults(func=_fetch)

    cache = sub.add_parser("cache", help="list, count or evict the disk cache")
    cache.add_argument("action", choices=["ls", "stats", "evict"])
    cache.add_argument("--sha256", help="evict: only this file")
    cache.add_argument("--all", action="store_true", help="evict: every unpinned file not in use")
    cache.add_argument("--include-pinned", action="store_true", help="evict: pinned files too")
    cache.set_defaults(func=_cache)
    run = sub.add_parser("run", help="build a graph, run it on a pod (of several), save the outputs")
    run.add_argument("--pod", action="append", required=True, help="ComfyUI pod URL (repeat for several)")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", help="a template in workflows/ (e.g. sd15_txt2img)")
    what.add_argument("--workflow", help="a workflow JSON file (API format or saved from the graph editor)")
    run.add_argument("--param", action="append", type=_param, default=[], help="template parameter key=value")
    run.add_argument("--lora", action="append", default=[], help="SOURCE[:model[:clip]]: s3://…, https://… or a file on the pod")
    run.add_argument("--mode", choices=["auto", "hotswap", "merge"], default="auto",
                     help="how pack pods apply LoRAs (auto: hot-swap a stack the first time, merge it on repeats)")
    run.add_argument("--out", default="out", help="folder for the outputs (default: out)")
    run.set_defaults(func=_run)

    pods = sub.add_parser("pods", help="show the pods' health, queue, mode and cache")
    pods.add_argument("--pod", action="append", required=True)
    pods.set_defaults(func=_pods)
    serve = sub.add_parser("serve", help="run the bridge HTTP service")
    serve.add_argument("--pod", action="append", default=[], help="ComfyUI pod URL (repeatable)")
    serve.add_argument("--embedded-pod", action="store_true", help="also start a local CPU ComfyUI as a pod")
    serve.add_argument("--pods-dns", action="append", default=[], metavar="NAME:PORT",
                       help="every address of NAME is a pod on PORT, resolved again every LORA_BRIDGE_DNS_INTERVAL_S "
                       "(a Kubernetes headless Service; repeatable)")
    serve.add_argument("--db", help="database URL: sqlite:///path (default <cache>/bridge.sqlite3, one bridge) or "
                       "postgresql://user@host:port/db (any number of replicas)")
    serve.add_argument("--replica-id", help="this replica's name, unique among replicas and kept across its restarts "
                       "(default host:port)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8288)
    serve.add_argument("--outputs", default="out/generations", help="folder for job outputs")
    serve.set_defaults(func=_serve)

    gen = sub.add_parser("generate", help="ask the bridge service (LORA_BRIDGE_URL) for a generation, with live progress")
    gen.add_argument("--template", required=True)
    gen.add_argument("--param", action="append", type=_param, default=[])
    gen.add_argument("--character-id")
    gen.add_argument("--brand-id")
    gen.add_argument("--lora-id", action="append", default=[])
    gen.add_argument("--policy", choices=["fallback", "strict"], default="fallback")
    gen.set_defaults(func=_generate)

    train = sub.add_parser("train", help="train a LoRA on a pod through the bridge service (LORA_BRIDGE_URL), with live "
                                          "progress; it is registered, validated and ready at the end")
    train.add_argument("dataset", help="a zip of images with same-name .txt captions, or s3://bucket/prefix/ (every file "
                                       "under it), or one URL")
    train.add_argument("--name", required=True)
    train.add_argument("--trigger-word", required=True)
    train.add_argument("--checkpoint", required=True, help="the base model's file on the pods")
    train.add_argument("--template", default="train_sd15_lora")
    train.add_argument("--preset", choices=["fast", "balanced", "quality"], default="balanced")
    train.add_argument("--character-id")
    train.add_argument("--brand-id")
    train.add_argument("--steps", type=int)
    train.add_argument("--rank", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--resolution", type=int)
    train.set_defaults(func=_train)

    loras = sub.add_parser("loras", help="the bridge service's LoRA registry: add, ls, show")
    loras.add_argument("action", choices=["add", "ls", "show"])
    loras.add_argument("--id", help="show: the LoRA id")
    loras.add_argument("--name")
    loras.add_argument("--source", help="add: s3://… or https://… (header inspected for family, rank, trigger word)")
    loras.add_argument("--status", default="ready", choices=["pending", "training", "validating", "ready", "failed"])
    loras.add_argument("--character-id")
    loras.add_argument("--brand-id")
    loras.add_argument("--trigger-word")
    loras.set_defaults(func=_loras)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LoraBridgeError as exc:
        print(f"lora-bridge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
