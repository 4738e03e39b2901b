"""What hostile clients try at the edges, at the level of each cause: numbers that are not JSON numbers
(every numeric field of every route, the pods' included), text that is no Unicode, bodies over their
limit, event streams whose clients hang up or stay quiet, and the queue of a pod that went away."""

from __future__ import annotations

import asyncio
import logging
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
from comfyui_lora_bridge.bridge import pack_protocol as protocol
from comfyui_lora_bridge.bridge.http.app import ROUTES as SERVICE_ROUTES
from comfyui_lora_bridge.bridge.http.errors import classify
from comfyui_lora_bridge.bridge.http.routing import GENERATIONS
from comfyui_lora_bridge.bridge.http.streams import job_events
from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase, Database
from comfyui_lora_bridge.bridge.jobs.metrics import render
from comfyui_lora_bridge.bridge.jobs.runner import Generations
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.bridge.settings import Settings
from comfyui_lora_bridge.nodes.routes import ROUTES as POD_ROUTES
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

Path_ = tuple[Any, ...]


def _numeric_leaves(annotation: Any, at: Path_) -> Iterator[Path_]:
    """Paths (field names, list indexes, dict keys) to every field that takes only numbers."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _numeric_leaves(args[0], at)
    elif origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            yield from _numeric_leaves(members[0], at)
        elif all(typing.get_origin(m) is not typing.Literal and _is_number(m) for m in members):
            yield at  # int | float
    elif origin in (list, tuple, set, frozenset):
        yield from _numeric_leaves(args[0], (*at, 0))
    elif origin is dict:
        key_type = args[0]
        key = typing.get_args(key_type)[0] if typing.get_origin(key_type) is typing.Literal else "k"
        yield from _numeric_leaves(args[1], (*at, key))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _numeric_leaves(field.annotation, (*at, field.alias or name))
    elif _is_number(annotation):
        yield at


def _is_number(annotation: Any) -> bool:
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    return base in (int, float)


def _payload(at: Path_, value: Any) -> Any:
    """A JSON value with ``value`` at path ``at`` (lists and objects built along the way)."""
    if not at:
        return value
    head, rest = at[0], at[1:]
    return [_payload(rest, value)] if isinstance(head, int) else {head: _payload(rest, value)}


def _json_bodies() -> list[tuple[str, type[BaseModel], Path_]]:
    """Every JSON body of the service's and the pods' routes, and the pack's stack entries (the JSON a
    graph gives Apply LoRA Stack)."""
    inputs = [(f"{spec.method} {spec.path}", spec.body) for spec, _ in [*SERVICE_ROUTES, *POD_ROUTES]
              if spec.body is not None and spec.content_type == "application/json"]
    inputs.append(("Apply LoRA Stack loras[]", protocol.StackEntry))
    return [(f"{name} body.{'.'.join(map(str, at))}", model, at) for name, model in inputs for at in _numeric_leaves(model, ())]


BODIES = _json_bodies()


def test_the_schemas_have_numeric_fields_to_check() -> None:
    names = {case for case, _, _ in BODIES}
    assert len(BODIES) >= 20, names  # the walk finds them: strengths, sizes, steps, seeds …
    assert any(name.endswith("strength_model") for name in names) and any("lora_strength" in name for name in names)
    assert any(name.startswith("Apply LoRA Stack") for name in names)  # the pack's JSON too


@pytest.mark.parametrize("case,model,at", BODIES, ids=[case for case, _, _ in BODIES])
@settings(max_examples=12, deadline=None)
@given(wrong=st.booleans() | st.integers(-1000, 1000).map(str) | st.floats(-100, 100, allow_nan=False).map(str))
def test_no_numeric_field_takes_a_string_or_a_boolean(case: str, model: type[BaseModel], at: Path_, wrong: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        protocol.validate_json(model, _payload(at, wrong))
    assert any(tuple(err["loc"][:len(at)]) == at and err["type"] in ("float_type", "int_type")
               for err in refused.value.errors()), (case, refused.value.errors())


def test_a_json_number_still_is_a_number() -> None:
    entry = protocol.validate_json(protocol.StackEntry, {"name": "a.safetensors", "strength_model": 1, "strength_clip": 0.5})
    assert entry.strength_model == 1.0 and isinstance(entry.strength_model, float)


def test_text_that_is_no_unicode_is_refused_naming_where() -> None:
    with pytest.raises(protocol.UnencodableText, match=r"params\.prompt: not valid Unicode"):
        protocol.strict_json('{"params": {"prompt": "\\ud800 x"}}')
    with pytest.raises(protocol.UnencodableText, match=r"loras\[1\]"):
        protocol.strict_json('{"loras": [{}, "\\udfff"]}')
    assert classify(protocol.UnencodableText("x")) == (422, "invalid_text")
    assert protocol.strict_json('{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001F600"}  # a surrogate pair is fine


def test_too_large_is_413_at_the_cause() -> None:
    from comfyui_lora_bridge.bridge.lorafiles.validate import SizeLimits
    from comfyui_lora_bridge.bridge.training.dataset import DatasetLimits, DatasetTooLarge

    with pytest.raises(Exception) as big:
        SizeLimits(max_bytes=10).check(11)
    assert classify(big.value) == (413, "too_large")
    assert classify(protocol.PayloadTooLarge("body over 65536 bytes")) == (413, "too_large")
    assert classify(DatasetTooLarge("x")) == (413, "too_large") and DatasetLimits().max_bytes > 0


# -- event streams ------------------------------------------------------------------------------------


def _stream_request(tmp_path: Path) -> tuple[Any, str]:
    """A request object for ``job_events`` over the real job core and SQLite (no notifications), and a
    job that stays queued: nothing happens to it while the stream runs."""
    db = Database(str(tmp_path / "bridge.sqlite3"))
    job = db.add_job({"template": "sd15_txt2img", "params": {}}, {}, [("queued", {})])
    gens = Generations(AsyncDatabase(db), PodPool([PodConfig("http://127.0.0.1:9")]), tmp_path,
                       Settings.from_env({"LORA_BRIDGE_CACHE": str(tmp_path)}), FetchPolicy())
    gens.hub.notified = False  # as on PostgreSQL with its listener down: streams poll
    return types.SimpleNamespace(app={GENERATIONS: gens}), job


def test_heartbeats_come_at_the_configured_period_while_polling_every_second(tmp_path: Path) -> None:
    request, job = _stream_request(tmp_path)
    sent: list[str] = []

    async def send(seq: int, type: str, data: dict) -> None:
        sent.append(type)

    async def beat() -> None:
        sent.append("heartbeat")

    async def run() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(job_events(request, job, 0, 2.0, send, beat), 5.0)

    asyncio.run(run())
    assert sent == ["queued", "heartbeat", "heartbeat"]  # at 2 s and 4 s, not one a second


def test_a_client_that_hangs_up_ends_the_stream_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    request, job = _stream_request(tmp_path)

    async def send(seq: int, type: str, data: dict) -> None:
        raise ConnectionResetError("Cannot write to closing transport")

    async def beat() -> None:
        raise AssertionError("no heartbeat to a client that left")

    with caplog.at_level(logging.DEBUG, logger="lora_bridge"):
        asyncio.run(asyncio.wait_for(job_events(request, job, 0, 2.0, send, beat), 5.0))  # returns, raises nothing
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("hung up" in r.getMessage() for r in caplog.records)


# -- pods ---------------------------------------------------------------------------------------------


def test_a_pod_that_does_not_answer_has_no_queue_figure() -> None:
    pool = PodPool([PodConfig("http://127.0.0.1:9")])
    (pod,) = asyncio.run(pool.refresh(force=True))
    assert not pod.healthy and pod.summary()["queue"] is None
    page = render("r1", {}, asyncio.run(_metrics()), [{"pod": "p", "state": "lost", "healthy": False, "queue": None,
                                                                "fetch_failures": 0}],
                  [], 0.0)
    assert 'lora_bridge_pod_healthy{replica="r1",pod="p"} 0' in page and "lora_bridge_pod_queue{" not in page


async def _metrics() -> Any:
    from comfyui_lora_bridge.bridge.jobs.metrics import JobMetrics

    return JobMetrics()
