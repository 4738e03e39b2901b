"""Several pods: health, routing by queue length and cached LoRAs, prefetch, failover, drain.

A pod is healthy while ``/system_stats`` and ``/queue`` answer; an unhealthy pod gets no new
jobs until it answers again, nor does a draining one (the bridge or the pod's pack said so) or one
that missed its heartbeats (``silent``). Health older than ``health_ttl`` is read again; a job does not
wait for that read on a pod last seen healthy (it runs beside the job). A job goes to the usable pod
(matching its labels) that already holds most of the job's LoRAs, then with the fewest queued jobs; its
LoRAs are prefetched there (``/lora_bridge/prefetch``) before the graph is submitted. When no pod is
usable the job waits for one (``waiting``; a pod that joins or comes back takes it) up to ``wait_s``,
then fails with the reason.
A pod that dies before or during the job is retried after 2, 4 and 8 s (± jitter; ``failover`` and
``retry`` events), on another pod where one is usable; after the last retry the job fails with the
reason. A job waiting in the queue of a pod that starts draining is taken back out of it (``moved``)
and runs elsewhere; one already running there finishes there. A job is never silently dropped nor
run twice. Pods without the node pack run in stock mode (LoraLoader, files already on the pod);
which mode a pod supports comes from its ``/object_info``. The pods themselves may change at any
time (``sync``: the fleet's table, ``jobs/fleet.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import random
import time
from collections.abc import Collection, Set
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from ..errors import NoPodAvailable, PodDraining, PodError, PodUnavailable
from ..graphs.lora_insertion import LoraRequest
from ..graphs.validate import GraphInvalid
from ..lorafiles.sources import carries_credentials, redact_url
from ..pack_protocol import (
    NODE_APPLY_STACK,
    ROUTE_CACHE,
    ROUTE_CACHE_CLEAR,
    ROUTE_DRAIN,
    ROUTE_PREFETCH,
    ROUTE_PREFETCH_CANCEL,
    CacheClear,
    PrefetchCancel,
    PrefetchRequest,
    store_reference,
)
from .client import EventCallback, FileCallback, JobResult, PodClient, PodEvent


class PrefetchFailed(PodError):
    """The pod could not fetch one of the job's LoRAs (after its own retries)."""

    def __init__(self, lora: LoraRequest, reason: str) -> None:
        super().__init__(f"LoRA {lora.name} could not be fetched: {reason}")
        self.lora = lora


CACHE_COUNTERS = ("hits", "misses", "evictions", "entries", "bytes")


def _summed(counters: list[dict[str, Any]]) -> dict[str, Any]:
    totals = {key: sum(c.get(key, 0) for c in counters) for key in CACHE_COUNTERS}
    lookups = totals["hits"] + totals["misses"]
    return {**totals, "hit_rate": round(totals["hits"] / lookups, 4) if lookups else 0.0}


def pod_id(url: str) -> str:
    """A pod's id, the same on every replica: from its URL."""
    return "pod-" + hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PodConfig:
    url: str
    token: str | None = None
    labels: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return redact_url(self.url)

    @property
    def id(self) -> str:
        return pod_id(self.url)


@dataclass(frozen=True)
class Member:
    """A pod as the fleet's table has it: ``draining`` when it takes no new jobs, ``silent`` (why) when it
    missed its heartbeats."""

    config: PodConfig
    draining: bool = False
    silent: str | None = None


@dataclass
class PodStatus:
    config: PodConfig
    healthy: bool = False
    error: str | None = None
    queue: int | None = None  # prompts running or pending, as last read; None while the pod does not answer
    fetch_failures: int = 0  # LoRA downloads this pod gave up on, for this bridge's jobs
    pack: bool = False
    cached: set[str] = field(default_factory=set)
    cache_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # the pack's disk/memory counters, last read
    object_info: dict[str, Any] = field(default_factory=dict)
    checked: float = 0.0
    facts_checked: float = 0.0  # when object_info was last read
    draining: bool = False  # the fleet drains it (DELETE /v1/pods/{id}, its pack's drain route, gone from DNS)
    pack_draining: bool = False  # its pack says it drains (read with its health)
    silent: str | None = None  # it missed its heartbeats: treated as lost

    @property
    def usable(self) -> bool:
        """Whether it may take a new job."""
        return self.healthy and not self.draining and not self.pack_draining and self.silent is None

    @property
    def state(self) -> str:
        """``draining``, ``lost`` (not answering, or silent), ``busy`` (prompts queued or running) or ``ready``."""
        if self.draining or self.pack_draining:
            return "draining"
        if not self.healthy or self.silent is not None:
            return "lost"
        return "busy" if self.queue else "ready"

    def summary(self) -> dict[str, Any]:
        return {"id": self.config.id, "pod": self.config.name, "state": self.state, "healthy": self.healthy,
                "error": self.silent or self.error, "queue": self.queue, "mode": "pack" if self.pack else "stock",
                "cached_loras": len(self.cached), "labels": sorted(self.config.labels)}


Graph = dict[str, Any]
GraphBuilder = Callable[[PodStatus, list[LoraRequest]], Graph | Awaitable[Graph]]  # a pod and its LoRAs as named -> graph


class PodPool:
    def __init__(self, pods: list[PodConfig], health_ttl: float = 3.0, facts_ttl: float = 60.0, reconnects: int = 3,
                 backoff: float = 0.3, retry_delays: tuple[float, ...] = (2.0, 4.0, 8.0), jitter: float = 0.25,
                 wait_s: float = 900.0, watch_s: float = 0.5) -> None:
        self.status = {p.url: PodStatus(p) for p in pods}
        self.health_ttl, self.facts_ttl, self.reconnects, self.backoff = health_ttl, facts_ttl, reconnects, backoff
        self.retry_delays, self.jitter, self.wait_s, self.watch_s = retry_delays, jitter, wait_s, watch_s
        self._rechecks: dict[str, asyncio.Task[None]] = {}  # pod URL -> its check running beside the jobs

    def sync(self, members: list[Member]) -> None:
        """Make the pool the fleet's pods: new ones join (checked at the next refresh), gone ones leave (a job
        running there keeps its own reference), the others take their labels, token and draining state."""
        wanted = {m.config.url: m for m in members}
        for url in [u for u in self.status if u not in wanted]:
            del self.status[url]
        for url, member in wanted.items():
            pod = self.status.setdefault(url, PodStatus(member.config))
            pod.config, pod.draining, pod.silent = member.config, member.draining, member.silent

    def by_id(self, pod_id: str) -> PodStatus | None:
        return next((s for s in self.status.values() if s.config.id == pod_id), None)

    def by_name(self, name: str | None) -> PodStatus | None:
        """The configured pod shown as ``name`` (job records name their pod), if any."""
        return next((s for s in self.status.values() if s.config.name == name), None)

    def client(self, pod: PodStatus, timeout: float = 30.0) -> PodClient:
        return PodClient(pod.config.url, pod.config.token, timeout=timeout, reconnects=self.reconnects, backoff=self.backoff)

    async def _check(self, pod: PodStatus) -> None:
        try:
            async with self.client(pod, timeout=10) as client:
                await client.get_json("/system_stats")
                queue = await client.get_json("/queue")
                pod.queue = len(queue.get("queue_running", [])) + len(queue.get("queue_pending", []))
                if not pod.object_info or time.monotonic() - pod.facts_checked > self.facts_ttl:
                    pod.object_info, pod.facts_checked = await client.object_info(), time.monotonic()
                pod.pack = NODE_APPLY_STACK in pod.object_info
                if pod.pack:
                    pod.pack_draining = await self._draining(client)
                    cache = await client.get_json(ROUTE_CACHE)
                    pod.cached = {item["sha256"] for item in cache.get("disk", {}).get("items", [])}
                    pod.cache_stats = {part: {k: v for k, v in cache.get(part, {}).items() if k != "items"}
                                       for part in ("disk", "memory")}
            pod.healthy, pod.error = True, None
        except PodError as exc:  # what the pod holds or runs is unknown until it answers again
            pod.healthy, pod.error, pod.queue = False, str(exc), None
        pod.checked = time.monotonic()

    @staticmethod
    async def _draining(client: PodClient) -> bool:
        """Whether the pod's pack says it drains (a pack without the drain route never does)."""
        try:
            return bool((await client.get_json(ROUTE_DRAIN)).get("draining"))
        except PodUnavailable:
            raise
        except PodError:
            return False

    async def refresh_facts(self, pod: PodStatus) -> None:
        """Re-read the pod's ``/object_info`` now (a file or node may have been added since)."""
        pod.facts_checked = 0.0
        await self._check(pod)

    async def build(self, pod: PodStatus, build: Callable[[PodStatus], Graph | Awaitable[Graph]]) -> Graph:
        """``build(pod)`` (a function or a coroutine function); a graph refused for what may be stale pod
        facts is rebuilt once after re-reading them."""
        async def built() -> Graph:
            graph = build(pod)
            return await graph if inspect.isawaitable(graph) else graph

        try:
            return await built()
        except GraphInvalid as exc:
            if not exc.pod_facts:
                raise
        await self.refresh_facts(pod)
        if not pod.healthy:  # it went away meanwhile: a pod failure (retried elsewhere), not a bad graph
            raise PodUnavailable(f"{pod.config.name} went away while its node list was re-read: {pod.error}")
        return await built()

    async def refresh(self, force: bool = False, beside: bool = False) -> list[PodStatus]:
        """Re-check pods whose health is older than ``health_ttl`` (all with ``force``). With ``beside`` (a job
        choosing its pod), a stale pod last seen healthy is re-checked in a task beside the caller, which goes on
        with what the pod last said: a job waits only for pods never seen or not healthy (one that went away
        since fails the attempt, and the retry reads every pod again)."""
        now = time.monotonic()
        stale = [p for p in self.status.values() if force or now - p.checked > self.health_ttl]
        if beside and not force:
            for pod in (p for p in stale if p.healthy):
                self._recheck_beside(pod)
            stale = [p for p in stale if not p.healthy]
        await asyncio.gather(*(self._check(p) for p in stale))
        return list(self.status.values())

    def _recheck_beside(self, pod: PodStatus) -> None:
        """Check ``pod`` in a task of its own, unless one is checking it already."""
        running = self._rechecks.get(pod.config.url)
        if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
            self._rechecks[pod.config.url] = asyncio.ensure_future(self._check(pod))

    async def cache_report(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The caches of every healthy pack pod, read now: per pod, and summed per cache
        (``memory``, ``disk``, and ``total`` for both) with the hit rate of each sum."""
        pods = [p for p in await self.refresh(force=True) if p.healthy and p.pack and p.cache_stats]
        parts = {part: [p.cache_stats[part] for p in pods] for part in ("memory", "disk")}
        sums = {**{part: _summed(counters) for part, counters in parts.items()},
                "total": _summed(parts["memory"] + parts["disk"])}
        return [{"pod": p.config.name, **p.cache_stats} for p in pods], sums

    async def cache_contents(self, pod: PodStatus) -> dict[str, Any]:
        """What a pack pod holds now: its ``disk`` and ``memory`` caches, each with counters and ``items``."""
        async with self.client(pod, timeout=10) as client:
            return await client.get_json(ROUTE_CACHE)

    async def clear_cache(self, pod: PodStatus, what: CacheClear, timeout: float = 30.0) -> dict[str, Any]:
        """Clear a pack pod's memory and/or unused disk files; the pod's answer (``{"cleared": …}``)."""
        async with self.client(pod, timeout=timeout) as client:
            return await client.post_json(ROUTE_CACHE_CLEAR, what.model_dump())

    async def preload(self, pod: PodStatus, lora: LoraRequest) -> dict[str, Any]:
        """Fetch ``lora`` on a pack pod and load it into the pod's memory cache ahead of any job."""
        assert lora.source is not None
        payload = PrefetchRequest(source=lora.source, sha256=lora.sha256, memory=True)
        async with self.client(pod, timeout=900) as client:
            result = await client.post_json(ROUTE_PREFETCH, payload.model_dump(exclude_none=True))
        if result.get("sha256"):
            pod.cached.add(result["sha256"])
        return result

    def choose(self, units: Collection[Set[str]], labels: Set[str] = frozenset(), exclude: Set[str] = frozenset(),
               pack_only: bool = False) -> PodStatus:
        """The usable pod with the requested labels (and the node pack, with ``pack_only``) that holds most
        of the job's LoRAs, then the shortest queue, then the first to join. A LoRA is a unit of files
        (its SHA-256s; a Wan 2.2 pair has two) and counts only where all of them are cached."""
        candidates = [p for p in self.status.values() if p.usable and p.config.url not in exclude
                      and labels <= p.config.labels and (p.pack or not pack_only)]
        if not candidates:
            lacks = "excluded, lacks labels" + (" or the node pack" if pack_only else "")

            def why(p: PodStatus) -> str:
                if p.silent is not None or not p.healthy:
                    return p.silent or p.error or "not answering"
                return "draining" if p.draining or p.pack_draining else lacks

            reasons = "; ".join(f"{p.config.name}: {why(p)}" for p in self.status.values()) or "the bridge has no pods"
            raise NoPodAvailable(f"no healthy pod can take the job ({reasons})")
        order = list(self.status)
        return min(candidates, key=lambda p: (-sum(unit <= p.cached for unit in units), p.queue or 0, order.index(p.config.url)))

    async def prefetch(self, pod: PodStatus, loras: list[LoraRequest], request_id: str | None = None,
                       on_event: EventCallback | None = None) -> list[LoraRequest]:
        """Download the job's LoRAs on ``pod`` ahead of the job (pack pods only; ``request_id`` names
        the downloads for ``cancel_prefetch``). Returns the LoRAs as the graph should name them:
        with their SHA-256, and a URL that carries credentials replaced by a reference to the
        pod's store, so no signature or token reaches the graph, the pod's history or a PNG. A LoRA the
        graph names by file (``linked``: a Comfy API v2 asset) is always sent, so the pod links it under its name.
        Each retry of a pod-side download is reported as a ``fetch_retry`` event."""
        if not pod.pack:
            return list(loras)
        wanted = [lora for lora in loras if lora.source and (not lora.sha256 or lora.sha256 not in pod.cached
                                                             or carries_credentials(lora.source) or lora.linked)]
        fetched: dict[int, str] = {}
        if wanted:
            fetched = dict(zip(map(id, wanted), await self._prefetch(pod, wanted, request_id, on_event)))
            pod.cached |= set(fetched.values())
        named = []
        for lora in loras:
            sha = lora.sha256 or fetched.get(id(lora))
            source = store_reference(sha) if sha and lora.source and carries_credentials(lora.source) else lora.source
            named.append(replace(lora, sha256=sha, source=source))
        return named

    async def _prefetch(self, pod: PodStatus, wanted: list[LoraRequest], request_id: str | None,
                        on_event: EventCallback | None) -> list[str]:
        async with self.client(pod, timeout=900) as client:
            watcher = asyncio.ensure_future(self._watch_retries(client, request_id, on_event)) \
                if request_id and on_event else None
            async def one(lora: LoraRequest) -> str:
                try:
                    payload = PrefetchRequest(source=lora.source, sha256=lora.sha256, name=lora.name, request_id=request_id)
                    result = await client.post_json(ROUTE_PREFETCH, payload.model_dump(exclude_none=True))
                except PodUnavailable:
                    raise
                except PodError as exc:  # the pod answered: the LoRA itself is the problem
                    pod.fetch_failures += 1
                    raise PrefetchFailed(lora, str(exc)) from None
                return result["sha256"]

            try:
                return list(await asyncio.gather(*(one(lora) for lora in wanted)))
            finally:
                if watcher is not None:
                    watcher.cancel()

    @staticmethod
    async def _watch_retries(client: PodClient, request_id: str, on_event: EventCallback, every: float = 0.5) -> None:
        """Report the pod's download retries for ``request_id`` while the prefetch runs."""
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(every)
            try:
                listing = await client.get_json(ROUTE_PREFETCH)
            except PodError:
                continue
            for item in listing.get("downloads", []):
                if item.get("request_id") != request_id or item.get("retries", 0) <= seen.get(item["source"], 0):
                    continue
                seen[item["source"]] = item["retries"]
                maybe = on_event(PodEvent("fetch_retry", {"source": item["source"], "retries": item["retries"],
                                                          "reason": item.get("last_error")}))
                if asyncio.iscoroutine(maybe):
                    await maybe

    async def cancel_prefetch(self, pod: PodStatus, request_id: str) -> None:
        """Stop the pod's downloads for ``request_id`` (a cancelled job's LoRAs)."""
        if pod.pack:
            async with self.client(pod, timeout=10) as client:
                await client.post_json(ROUTE_PREFETCH_CANCEL, PrefetchCancel(request_id=request_id).model_dump())

    async def run(self, build: GraphBuilder, loras: list[LoraRequest], on_event: EventCallback | None = None,
                  labels: frozenset[str] = frozenset(), request_id: str | None = None, pack_only: bool = False,
                  stage: Callable[[PodStatus], Awaitable[None]] | None = None,
                  retry_delays: tuple[float, ...] | None = None,
                  on_file: FileCallback | None = None) -> tuple[JobResult, PodStatus]:
        """Run a job: choose a pod (waiting up to ``wait_s`` while none is usable: ``waiting``), prefetch,
        ``stage`` (put the job's inputs on it), build its graph, submit, stream. A pod that is down or dies
        is retried after each of ``retry_delays`` (the pool's unless given; ``failover`` then ``retry``
        events), preferring pods that have not failed this job; a draining pod gives back a job that had
        not started (``moved``: it runs elsewhere at once). ``request_id`` names the prefetches; ``pack_only``
        keeps the job to pods with the node pack (a graph that names LoRA assets: the pack fetches them);
        ``on_file`` gets each output file as soon as it is fetched."""
        delays = self.retry_delays if retry_delays is None else retry_delays
        failed: set[str] = set()
        files: dict[str, set[str]] = {}  # a LoRA's files by its name: a Wan 2.2 pair routes as one unit
        for lora in loras:
            if lora.sha256:
                files.setdefault(lora.name, set()).add(lora.sha256)
        units = list(files.values())
        reason, failures, attempt, since = "", 0, 0, None  # since: when the job began to wait for a usable pod

        async def emit(type: str, data: dict[str, Any]) -> None:
            if on_event is not None:
                maybe = on_event(PodEvent(type, data))
                if asyncio.iscoroutine(maybe):
                    await maybe

        while True:
            await self.refresh(force=bool(reason) and since is None, beside=True)  # after a failure, read every pod again
            try:
                try:
                    pod = self.choose(units, labels, failed, pack_only)
                except NoPodAvailable:
                    pod = self.choose(units, labels, pack_only=pack_only)  # only pods that failed this job: one that is back will do
            except NoPodAvailable as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                    await emit("waiting", {"reason": str(exc), "for_s": self.wait_s})
                if now - since >= self.wait_s:
                    raise NoPodAvailable(f"no pod could take the job within {self.wait_s:g} s "
                                         f"(LORA_BRIDGE_QUEUE_TIMEOUT_S): {exc}") from None
                await asyncio.sleep(min(self.watch_s * 2, self.wait_s - (now - since)))
                continue
            since, attempt = None, attempt + 1
            await emit("assigned", {"pod": pod.config.name, "attempt": attempt, "mode": "pack" if pod.pack else "stock"})
            try:
                named = await self.prefetch(pod, loras, request_id, on_event)
                if stage is not None:
                    await stage(pod)
                graph = await self.build(pod, lambda p: build(p, named))  # noqa: B023 (used within this attempt)
                pod.queue = (pod.queue or 0) + 1
                return await self._submit(pod, graph, on_event, on_file), pod
            except PodDraining as exc:
                await emit("moved", {"pod": pod.config.name, "reason": str(exc)})
            except PodUnavailable as exc:
                pod.healthy, pod.error = False, str(exc)
                failed.add(pod.config.url)
                reason = f"{pod.config.name}: {exc}"
                await emit("failover", {"pod": pod.config.name, "reason": str(exc), "attempt": attempt})
                failures += 1
                if failures > len(delays):
                    raise NoPodAvailable(f"the job failed after {len(delays)} retries; last: {reason}") from None
                delay = delays[failures - 1] * (1 + random.uniform(-self.jitter, self.jitter))
                await emit("retry", {"retry": failures, "of": len(delays), "delay_s": round(delay, 2), "reason": reason})
                await asyncio.sleep(delay)

    async def _submit(self, pod: PodStatus, graph: Graph, on_event: EventCallback | None,
                      on_file: FileCallback | None) -> JobResult:
        """Submit and stream, watching the pod: one that misses its heartbeats fails the attempt
        (``PodUnavailable``); one that starts draining before the prompt runs gets it withdrawn (``PodDraining``)."""
        submitted: list[str] = []

        async def seen(event: PodEvent) -> None:
            if event.type == "submitted":
                submitted.append(event.data["prompt_id"])
            if on_event is not None:
                maybe = on_event(event)
                if asyncio.iscoroutine(maybe):
                    await maybe

        async with self.client(pod, timeout=300) as client:
            run = asyncio.ensure_future(client.run(graph, seen, on_file=on_file))
            withdrawing = True
            try:
                while True:
                    done, _ = await asyncio.wait({run}, timeout=self.watch_s)
                    if done:
                        return run.result()
                    if pod.silent is not None:
                        raise PodUnavailable(f"{pod.config.name} {pod.silent}")
                    if withdrawing and submitted and (pod.draining or pod.pack_draining):
                        withdrawing = False  # asked once: a prompt that runs already finishes here
                        if await client.withdraw(submitted[0]):
                            raise PodDraining(f"{pod.config.name} is draining; the job had not started there")
            finally:
                if not run.done():
                    run.cancel()
                    await asyncio.gather(run, return_exceptions=True)
