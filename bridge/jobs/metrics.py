"""``/metrics`` in Prometheus' text format.

Two kinds of figures: what the shared database says (jobs by status; the waiting and running
work by template and family, and the oldest waiting job's age: what an autoscaler scales on; the
same on every replica) and what this replica observed (pods ready, busy or lost, queue wait and
duration of the jobs it ended, pod health and queues, LoRA fetches its pods gave up on, the pods'
own cache hit rates). A scraper sums the per-replica counters across replicas; each sample names
its ``replica``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from .records import GENERATION, JobRecord
from .states import WAITING, JobState

# seconds: from a sub-second wait in a warm queue to a long training
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


@dataclass
class Histogram:
    name: str
    help: str
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def lines(self, labels: str) -> list[str]:
        out, running = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts):
            running += count
            out.append(f'{self.name}_bucket{{{labels},le="{bound}"}} {running}')
        out += [f"{self.name}_sum{{{labels}}} {round(self.total, 6)}", f"{self.name}_count{{{labels}}} {running}"]
        return out


@dataclass
class JobMetrics:
    """What this replica saw of the jobs it ended."""

    queue_wait: Histogram = field(default_factory=lambda: Histogram(
        "lora_bridge_job_queue_wait_seconds", "From accepted to running on a pod, per job ended by this replica"))
    duration: Histogram = field(default_factory=lambda: Histogram(
        "lora_bridge_job_duration_seconds", "From accepted to its end, per job ended by this replica"))

    def observe(self, job: JobRecord) -> None:
        result, created = job.result, job.created
        if "started_at" in result:
            self.queue_wait.observe(max(0.0, result["started_at"] - created))
        self.duration.observe(max(0.0, result.get("finished_at", job.updated) - created))


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _work(unfinished: list[JobRecord], now: float) -> list[str]:
    """What the unfinished work needs, for an autoscaler: jobs waiting for a pod and running, by what they run
    (template, or ``workflow``; and the model family where it is known), and how long the oldest has waited."""
    counts: dict[tuple[str, str, str], int] = {}
    oldest = 0.0
    waiting = {s.value for s in WAITING}
    for job in unfinished:
        phase = "waiting" if job.status in waiting else "running" if job.status == JobState.RUNNING.value else None
        if phase is None:
            continue
        what = str(job.request.get("template") or ("workflow" if job.kind == GENERATION else job.kind))
        family = str(job.result.get("family") or job.request.get("family") or "unknown")
        counts[(phase, what, family)] = counts.get((phase, what, family), 0) + 1
        if phase == "waiting":
            oldest = max(oldest, now - job.created)
    lines = []
    for phase, help in (("waiting", "Jobs waiting for a pod (queued, preparing, in a pod's queue)"),
                        ("running", "Jobs running on a pod")):
        lines += [f"# HELP lora_bridge_jobs_{phase} {help}, by template and family", f"# TYPE lora_bridge_jobs_{phase} gauge"]
        lines += [f'lora_bridge_jobs_{phase}{{template="{escape(w)}",family="{escape(f)}"}} {n}'
                  for (p, w, f), n in sorted(counts.items()) if p == phase]
    lines += ["# HELP lora_bridge_oldest_waiting_job_seconds How long the oldest job waiting for a pod has waited",
              "# TYPE lora_bridge_oldest_waiting_job_seconds gauge", f"lora_bridge_oldest_waiting_job_seconds {round(oldest, 3)}"]
    return lines


def render(replica: str, job_counts: dict[str, int], jobs: JobMetrics, pods: list[dict[str, Any]],
           unfinished: list[JobRecord], now: float) -> str:
    """The page: ``pods`` are dicts with ``pod``, ``state``, ``healthy``, ``queue``, ``fetch_failures`` and, for pack
    pods that answered, ``cache`` (``{"disk"|"memory": {"hits", "misses", ...}}``); ``unfinished`` the jobs
    that have not ended (the shared database)."""
    r = f'replica="{escape(replica)}"'
    lines = ["# HELP lora_bridge_jobs Jobs in each state (the shared database)", "# TYPE lora_bridge_jobs gauge"]
    lines += [f'lora_bridge_jobs{{status="{escape(status)}"}} {count}' for status, count in sorted(job_counts.items())]
    lines += _work(unfinished, now)
    states = {state: sum(p["state"] == state for p in pods) for state in ("ready", "busy", "draining", "lost")}
    lines += ["# HELP lora_bridge_pods Pods as this replica sees them: ready (idle), busy (prompts queued or running), "
              "draining (taking no new jobs), lost (not answering, or missed heartbeats)", "# TYPE lora_bridge_pods gauge"]
    lines += [f'lora_bridge_pods{{{r},state="{state}"}} {n}' for state, n in states.items()]
    lines += jobs.queue_wait.lines(r) + jobs.duration.lines(r)
    gauges = (("pod_healthy", "gauge", "1 if the pod answers", lambda p: int(p["healthy"])),
              ("pod_queue", "gauge", "Prompts running or pending on the pod", lambda p: p["queue"]),
              ("fetch_failures_total", "counter", "LoRA downloads the pod gave up on (this replica's jobs)",
               lambda p: p["fetch_failures"]))
    for name, kind, help, value in gauges:
        lines += [f"# HELP lora_bridge_{name} {help}", f"# TYPE lora_bridge_{name} {kind}"]
        lines += [f'lora_bridge_{name}{{{r},pod="{escape(p["pod"])}"}} {value(p)}' for p in pods
                  if value(p) is not None]  # a pod that does not answer has no queue figure (not a stale one)
    lines += ["# HELP lora_bridge_pod_cache_hit_rate Hits / lookups of the pod's LoRA cache (its own counters)",
              "# TYPE lora_bridge_pod_cache_hit_rate gauge"]
    for p in pods:
        for part, stats in sorted((p.get("cache") or {}).items()):
            lookups = stats.get("hits", 0) + stats.get("misses", 0)
            rate = round(stats.get("hits", 0) / lookups, 4) if lookups else 0.0
            lines.append(f'lora_bridge_pod_cache_hit_rate{{{r},pod="{escape(p["pod"])}",cache="{part}"}} {rate}')
    return "\n".join(lines) + "\n"
