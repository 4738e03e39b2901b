"""The job state machine: states, the transitions allowed between them, and what each means.

    queued ─▶ preparing ─▶ submitted ─▶ running ─▶ succeeded
      ▲           │             │          │
      └───────────┴(failover, moved)───────┘      any non-terminal ─▶ failed | cancelled
                                                  submitted, running ─▶ interrupted

- ``queued``: accepted and stored, waiting for a usable pod (``waiting`` says why, when none is).
- ``preparing``: a pod was chosen; the graph is built, the LoRAs prefetched and inputs uploaded there.
- ``submitted``: the prompt is in the pod's queue (prompt id known).
- ``running``: the pod executes it.
- ``succeeded``: outputs saved. ``failed``: with the reason. ``cancelled``: the caller asked.
- ``interrupted``: the pod stopped it without our asking (someone pressed Cancel in ComfyUI).

A pod that dies (``failover``), or drains before the job started there (``moved``), sends the job
back to ``queued``, for another pod. Every transition is stored
together with its event (``Database.transition``), so the event log and the state never disagree.
"""

from __future__ import annotations

from enum import Enum

from ..errors import LoraBridgeError


class JobState(str, Enum):
    QUEUED = "queued"
    PREPARING = "preparing"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


WAITING = frozenset({JobState.QUEUED, JobState.PREPARING, JobState.SUBMITTED})  # not yet running on a pod
TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED})
_ENDS = {JobState.FAILED, JobState.CANCELLED}
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PREPARING, *_ENDS}),
    JobState.PREPARING: frozenset({JobState.SUBMITTED, JobState.QUEUED, *_ENDS}),
    JobState.SUBMITTED: frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.INTERRUPTED, JobState.QUEUED, *_ENDS}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.INTERRUPTED, JobState.QUEUED, *_ENDS}),
    **{state: frozenset() for state in TERMINAL},
}


class IllegalTransition(LoraBridgeError):
    """A transition the state machine does not allow (a bug, or a job that already ended)."""


def check_transition(current: str, new: str) -> JobState:
    """``new`` as a ``JobState`` if the machine allows ``current -> new``; ``IllegalTransition`` otherwise."""
    try:
        src, dst = JobState(current), JobState(new)
    except ValueError:
        raise IllegalTransition(f"unknown job state in {current!r} -> {new!r}") from None
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(f"a {src} job cannot become {dst}")
    return dst


def is_terminal(state: str) -> bool:
    return state in {s.value for s in TERMINAL}
