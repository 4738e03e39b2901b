"""The pure parts of the job core, without a pod: states, the database, LoRA resolution and
fallback, routing, the error table, the pack protocol and settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from comfyui_lora_bridge.bridge import pack_protocol as protocol
from comfyui_lora_bridge.bridge.errors import (
    ConfigError,
    GenerationRefused,
    NoPodAvailable,
    NotFound,
    PodUnavailable,
    PromptRejected,
    QueueFull,
)
from comfyui_lora_bridge.bridge.graphs.templates import TemplateError
from comfyui_lora_bridge.bridge.http.errors import classify
from comfyui_lora_bridge.bridge.jobs.brand_store import BrandStore
from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase, Database
from comfyui_lora_bridge.bridge.jobs.planner import Plan, Resolution
from comfyui_lora_bridge.bridge.jobs.records import LoraRecord
from comfyui_lora_bridge.bridge.jobs.requests import GenerationCreate
from comfyui_lora_bridge.bridge.jobs.runner import Generations
from comfyui_lora_bridge.bridge.jobs.states import IllegalTransition, JobState
from comfyui_lora_bridge.bridge.lorafiles.sources import (
    FetchPolicy,
    SourceError,
    SourceRefused,
)
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.bridge.settings import Settings
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(str(tmp_path / "db.sqlite3"))


def test_transitions_are_checked_and_stored_with_their_event(db: Database) -> None:
    job = db.add_job({"template": "x"}, {"warnings": []}, [("queued", {})])
    db.transition(job, JobState.PREPARING, "preparing", pod="p1")
    db.transition(job, JobState.SUBMITTED, "submitted", {"position": 0}, {"client_id": "c"}, prompt_id="abc")
    with pytest.raises(IllegalTransition, match="a submitted job cannot become preparing"):
        db.transition(job, JobState.PREPARING, "preparing")  # a job leaves its pod only back to the queue
    db.transition(job, JobState.SUCCEEDED, "succeeded", result={"outputs": ["a.png"]})
    for state in JobState:  # an ended job stays ended, and nothing is written by the refusal
        with pytest.raises(IllegalTransition):
            db.transition(job, state, "late")
    record = db.get_job(job)
    assert record.status == "succeeded" and record.pod == "p1" and record.prompt_id == "abc"
    assert record.result == {"warnings": [], "client_id": "c", "outputs": ["a.png"]}
    assert [t for _, t, _ in db.events(job)] == ["queued", "preparing", "submitted", "succeeded"]
    assert db.unfinished_jobs() == []


def test_failover_and_interruption_paths(db: Database) -> None:
    job = db.add_job({}, {}, [("queued", {})])
    for state in (JobState.PREPARING, JobState.SUBMITTED, JobState.RUNNING, JobState.QUEUED, JobState.PREPARING,
                  JobState.SUBMITTED, JobState.QUEUED, JobState.PREPARING, JobState.SUBMITTED, JobState.INTERRUPTED):
        db.transition(job, state, state.value)
    assert db.get_job(job).status == "interrupted"
    with pytest.raises(IllegalTransition):  # interrupted is terminal, apart from cancelled
        db.transition(job, JobState.CANCELLED, "cancelled")


def test_a_runner_s_writes_leave_a_job_ended_elsewhere_as_it_ended(db: Database) -> None:
    job = db.add_job({}, {}, [("queued", {})])
    assert db.transition(job, JobState.PREPARING, "preparing", then=("assigned", {"pod": "p1"}), pod="p1",
                         unless_ended=True)
    db.transition(job, JobState.CANCELLED, "cancelled", result=lambda record: {"had": sorted(record)})  # by another replica
    assert not db.transition(job, JobState.SUBMITTED, "submitted", {"position": 0}, unless_ended=True)
    assert not db.patch_job(job, {"client_id": "c"}, "warning", {"message": "late"}, unless_ended=True)
    assert db.add_event(job, "progress", {"value": 1}, unless_ended=True) is None
    assert db.add_event(job, "webhook", {"delivered": False}) is not None  # an ended job's own last word still is
    record = db.get_job(job)
    assert record.status == "cancelled" and record.pod == "p1" and record.result == {"had": []}
    assert [t for _, t, _ in db.events(job)] == ["queued", "preparing", "assigned", "cancelled", "webhook"]


def test_a_full_queue_stores_nothing(db: Database) -> None:
    first = db.add_job({}, {}, [("queued", {})], waiting_below=2)
    db.add_job({}, {}, [("queued", {})], waiting_below=2)
    with pytest.raises(QueueFull, match="2 jobs are waiting"):
        db.add_job({"n": 3}, {}, [("queued", {})], waiting_below=2)
    assert len(db.unfinished_jobs()) == 2
    db.transition(first, JobState.CANCELLED, "cancelled")
    db.add_job({"n": 3}, {}, [("queued", {})], waiting_below=2)  # a place is free again
    assert [job.request for job in db.unfinished_jobs()][-1] == {"n": 3}


def test_records_refuse_non_standard_json(db: Database) -> None:
    job = db.add_job({}, {}, [])
    with pytest.raises(ValueError):
        db.patch_job(job, {"gpu_seconds": float("nan")})
    assert "gpu_seconds" not in db.get_job(job).result


def _registry(db: Database) -> dict[str, LoraRecord]:
    add = db.add_lora
    return {
        "ready": add({"name": "a", "owner_kind": "character", "owner_id": "1", "status": "ready", "family": "sd15",
                      "source": "s3://b/a.safetensors", "trigger_word": "ohwx"}),
        "training": add({"name": "b", "owner_kind": "character", "owner_id": "2", "status": "training", "family": "sd15",
                         "source": "s3://b/b.safetensors", "fallback_style": "watercolor"}),
        "sdxl": add({"name": "c", "owner_kind": "brand", "owner_id": "x", "status": "ready", "family": "sdxl",
                     "source": "s3://b/c.safetensors"}),
        "no source": add({"name": "d", "status": "ready", "family": "sd15"}),
    }


class Planner:
    """The job core's planning, called from a test (each call on an event loop of its own)."""

    def __init__(self, gens: Generations) -> None:
        self.gens = gens

    def prepare(self, request: GenerationCreate) -> Plan:
        return asyncio.run(self.gens.planner.plan(request))

    def resolve_loras(self, *args: Any) -> Resolution:
        return asyncio.run(self.gens.planner.resolve_loras(*args))

    def cancel(self, job_id: str) -> None:
        asyncio.run(self.gens.cancel(job_id))


def _gens(db: Database, tmp_path: Path, **settings) -> Planner:
    configured = Settings.from_env({"LORA_BRIDGE_CACHE": str(tmp_path), **settings})
    return Planner(Generations(AsyncDatabase(db), PodPool([PodConfig("http://127.0.0.1:9")], retry_delays=(0.05, 0.1, 0.2)),
                               tmp_path, configured, FetchPolicy()))


def test_lora_resolution_and_fallback(db: Database, tmp_path: Path) -> None:
    loras = _registry(db)
    gens = _gens(db, tmp_path)
    request = GenerationCreate(template="sd15_txt2img", character_id=1,
                               loras=[{"lora_id": loras["training"].id, "strength_model": 0.5},
                                      {"lora_id": loras["sdxl"].id}, {"lora_id": loras["no source"].id},
                                      {"lora_id": "missing"}])
    found = gens.resolve_loras(request, "sd15")
    chosen, warnings, styles = found.loras, found.warnings, found.styles
    assert [(lora.name, lora.strength_model, lora.trigger_words) for lora in chosen] == [(f"lora-{loras['ready'].id}", 1.0, ("ohwx",))]
    assert found.resolved == [{"lora_id": loras["ready"].id, "name": "a", "for": "character 1", "strength_model": 1.0,
                               "strength_clip": 1.0, "trigger_word": "ohwx"}]
    assert len(warnings) == 4 and styles == ["watercolor"]
    assert any("is training, not ready" in w for w in warnings) and any("is SDXL; the model is SD1.x" in w for w in warnings)
    assert any("has no source" in w for w in warnings) and any("LoRA missing not found" in w for w in warnings)
    plan = gens.prepare(request)  # the dropped LoRA's style words go into the prompt
    assert plan.params["prompt"].endswith(", watercolor") and plan.family == "sd15"
    strict = request.model_copy(update={"lora_policy": "strict"})
    with pytest.raises(GenerationRefused, match="not ready"):
        gens.prepare(strict)
    clip = GenerationCreate(template="sd15_txt2img", loras=[{"lora_id": loras["ready"].id, "strength_model": 0.7}])
    assert gens.resolve_loras(clip, "sd15").loras[0].strength_clip == 0.7  # clip follows model unless given


def test_references_by_name_and_owner_and_the_brand_store(db: Database, tmp_path: Path, weights) -> None:
    loras = _registry(db)
    db.add_lora({"name": "a", "status": "failed", "family": "sd15", "source": "s3://b/old.safetensors"})  # newer, failed
    store = tmp_path / "brands"
    (store / "acme").mkdir(parents=True)
    (store / "acme" / "lora.safetensors").write_bytes(Path(weights.loras["kohya_b"]).read_bytes())
    gens = _gens(db, tmp_path)
    brands = BrandStore(str(store), gens.gens.db, FetchPolicy(local_roots=(store,)))
    gens.gens.planner.discover_brand = brands.discover
    request = GenerationCreate(template="sd15_txt2img", loras=[
        {"name": "a", "strength_model": 0.4, "type": "style"}, {"brand_id": "acme", "strength_model": 0.6, "type": "product"},
        {"character_id": 1}, {"brand_id": "../brands/acme"}])
    found = gens.resolve_loras(request, "sd15")
    acme = db.list_loras(owner_kind="brand", owner_id="acme")
    assert [r.name for r in acme] == ["acme/lora.safetensors"] and acme[0].status == "ready"
    assert [(r["lora_id"], r["for"], r["strength_model"], r.get("type")) for r in found.resolved] == [
        (loras["ready"].id, "named 'a'", 0.4, "style"), (acme[0].id, "brand acme", 0.6, "product"),
        (loras["ready"].id, "character 1", 1.0, None)]  # by name: the ready one, not the newer failed one
    assert found.warnings == ["LoRA brand ../brands/acme not found for base model sd15; generating without it"]
    assert acme[0].trigger_word == "zwx" and acme[0].family == "sd15"
    assert brands.brands() == ["acme"] and gens.resolve_loras(request, "sd15").resolved[1]["lora_id"] == acme[0].id
    with pytest.raises(ValueError, match="name the LoRA one way"):
        GenerationCreate(template="sd15_txt2img", loras=[{"lora_id": "x", "brand_id": "y"}])


def test_a_lora_of_another_variant_is_dropped_or_refused_naming_both(db: Database, tmp_path: Path) -> None:
    add = db.add_lora
    small = add({"name": "wan small", "owner_kind": "character", "owner_id": "w", "status": "ready", "family": "wan",
                 "variant": "1.3B", "source": "s3://b/w13.safetensors", "version": 2})
    gens = _gens(db, tmp_path)
    request = GenerationCreate(template="wan22_t2v", character_id="w")  # the template declares Wan 2.2 A14B: "14B"
    found = gens.resolve_loras(request, "wan", "14B")
    chosen, warnings = found.loras, found.warnings
    assert chosen == [] and any(f"LoRA {small.id} (wan small) is Wan 2.x 1.3B; the model is Wan 2.x 14B" in w for w in warnings)
    with pytest.raises(GenerationRefused, match="is Wan 2.x 1.3B; the model is Wan 2.x 14B"):
        gens.prepare(request.model_copy(update={"lora_policy": "strict"}))
    big = add({"name": "wan big", "owner_kind": "character", "owner_id": "w", "status": "ready", "family": "wan",
               "variant": "14B", "source": "s3://b/w14.safetensors", "version": 1})
    chosen = gens.prepare(request).loras  # the owner's LoRA that fits, on both experts of Wan 2.2 A14B
    assert [(lora.name, lora.source_nodes) for lora in chosen] == [(f"lora-{big.id}", ("75",)), (f"lora-{big.id}", ("76",))]
    assert [lora.name for lora in gens.prepare(GenerationCreate(template="wan21_t2v", character_id="w")).loras] == \
        [f"lora-{small.id}"]  # no variant declared: the newest version, as before


def test_a_database_of_the_first_schema_gains_the_new_columns_with_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE loras (id TEXT PRIMARY KEY, owner_kind TEXT, owner_id TEXT, name TEXT, version INTEGER, "
                "status TEXT, family TEXT, trigger_word TEXT, fallback_style TEXT, source TEXT, sha256 TEXT, size INTEGER, "
                "rank INTEGER, metadata TEXT, created REAL, updated REAL)")
    old.execute("INSERT INTO loras VALUES ('old1', 'brand', 'b', 'kept', 1, 'ready', 'sdxl', 'tw', NULL, 's3://b/k.safetensors', "
                "NULL, 10, 4, '{}', 1.0, 1.0)")
    old.commit()
    old.close()
    db = Database(str(path))
    kept = db.get_lora("old1")
    assert kept.name == "kept" and kept.family == "sdxl" and kept.trigger_word == "tw" and kept.variant is None
    new = db.add_lora({"name": "new", "family": "wan", "variant": "14B", "source": "s3://b/n.safetensors"})
    assert db.get_lora(new.id).variant == "14B" and len(Database(str(path)).list_loras()) == 2


def test_webhooks_need_a_secret_and_an_allowed_host(db: Database, tmp_path: Path) -> None:
    request = GenerationCreate(template="sd15_txt2img", webhook_url="http://127.0.0.1:9/hook")
    with pytest.raises(GenerationRefused, match="LORA_BRIDGE_WEBHOOK_SECRET"):
        _gens(db, tmp_path).prepare(request)
    with pytest.raises(SourceRefused):
        _gens(db, tmp_path, LORA_BRIDGE_WEBHOOK_SECRET="s").prepare(request)  # loopback is not public


def test_routing_prefers_the_pod_holding_the_loras_then_the_shortest_queue() -> None:
    pool = PodPool([PodConfig(f"http://pod{i}") for i in range(3)] + [PodConfig("http://gpu", labels=frozenset({"gpu"}))])
    pods = list(pool.status.values())
    for pod, queue, cached in zip(pods, (0, 5, 1, 0), ({"a"}, {"a", "b"}, set(), set())):
        pod.healthy, pod.queue, pod.cached = True, queue, cached
    assert pool.choose([{"a"}, {"b"}]) is pods[1]  # holds both LoRAs: worth its queue
    assert pool.choose([{"a"}]) is pods[0]  # both hold "a": shorter queue
    assert pool.choose([]) is pods[0]  # equal: configuration order
    assert pool.choose([], frozenset({"gpu"})) is pods[3]
    # a Wan 2.2 pair (files h and l) is one unit: half of it cached counts for nothing
    for pod, queue, cached in zip(pods, (0, 3, 5), ({"h"}, {"h", "l"}, {"a", "b"})):
        pod.queue, pod.cached = queue, cached
    assert pool.choose([{"h", "l"}]) is pods[1] and pool.choose([{"h", "l"}, {"a"}, {"b"}]) is pods[2]
    pods[0].healthy, pods[0].error = False, "connection refused"
    assert pool.choose([{"h"}]) is pods[1]
    with pytest.raises(NoPodAvailable, match="connection refused"):
        pool.choose([], frozenset({"gpu"}), exclude={"http://gpu"})


def test_the_error_table() -> None:
    cases = [
        (TemplateError("x"), 400, "invalid_params"), (protocol.ProtocolError("x"), 400, "invalid_request"),
        (SourceRefused("x"), 400, "source_refused"), (SourceError("x"), 422, "source_unusable"),
        (NotFound("x"), 404, "not_found"), (GenerationRefused("x"), 422, "refused"),
        (NoPodAvailable("x"), 503, "pod_unavailable"), (PodUnavailable("x"), 503, "pod_unavailable"),
        (PromptRejected("x"), 502, "pod_error"), (ConfigError("x"), 500, "configuration"),
        (KeyError("x"), 500, "internal"), (ValueError("x"), 500, "internal"),  # bugs, not 400s
    ]
    for exc, status, kind in cases:
        assert classify(exc) == (status, kind), exc


strengths = st.floats(min_value=-100, max_value=100, allow_nan=False)
entries = st.builds(protocol.StackEntry, source=st.sampled_from(["s3://b/k.safetensors", "https://h/x.safetensors", None]),
                    name=st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True),
                    sha256=st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
                    strength_model=strengths, strength_clip=strengths, enabled=st.booleans())


@given(st.lists(entries, max_size=5))
def test_stack_json_round_trips(stack: list[protocol.StackEntry]) -> None:
    assert protocol.parse_stack(protocol.encode_stack(stack)) == stack


@pytest.mark.parametrize("text, problem", [
    ('[{"source": "x", "strength_model": true}]', "loras[0].strength_model: must be a number, not a boolean"),
    ('[{"source": "x", "strength_clip": "0.5"}]', "loras[0].strength_clip: must be a number, not a string"),
    ('[{"source": "x", "strength_model": NaN}]', "NaN is not valid JSON"),
    ('[{"source": "x", "strength_clip": 100.5}]', "loras[0].strength_clip"),
    ('[{"name": "x", "extra": 1}]', "loras[0].extra"),
    ('[{"strength_model": 1}]', "needs a 'source'"),
    ('{"source": "x"}', "must be a JSON list"),
    ('[{"name": "../x"}]', "loras[0].name"),
    ('[{"name": "x", "enabled": "no"}]', "loras[0].enabled"),
])
def test_stack_json_refusals_name_the_field(text: str, problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        protocol.parse_stack(text)


def test_a_character_in_a_video_takes_the_path_its_loras_allow(db: Database, tmp_path: Path) -> None:
    add = db.add_lora
    gens = _gens(db, tmp_path)
    image = add({"name": "hero sdxl", "owner_kind": "character", "owner_id": "hero", "status": "ready", "family": "sdxl",
                 "source": "s3://b/hero.safetensors", "trigger_word": "ohwx"})
    request = GenerationCreate(template="wan22_t2v", character_id="hero", params={"prompt": "running", "seed": 5, "width": 320},
                               key_frame_params={"checkpoint": "sdxl.safetensors"}, lora_strength=0.8)
    plan = gens.prepare(request)
    assert plan.path == "preprocess" and plan.template is not None and plan.template.name == "wan22_i2v" and plan.loras == []
    assert plan.key_frame is not None and plan.key_frame.template.name == "sdxl_txt2img"
    assert plan.key_frame.params == {"prompt": "running", "seed": 5, "checkpoint": "sdxl.safetensors"}
    assert [(lora.name, lora.strength_model) for lora in plan.key_frame.loras] == [(f"lora-{image.id}", 0.8)]
    assert plan.params == {"prompt": "running", "seed": 5, "width": 320}  # the UNets stay the image-to-video template's
    with pytest.raises(TemplateError, match="'steps' = 0"):
        gens.prepare(request.model_copy(update={"key_frame_params": {"steps": 0}}))  # the key frame's parameters, checked up front
    add({"name": "hero wan", "owner_kind": "character", "owner_id": "hero", "status": "ready", "family": "wan",
         "variant": "14B", "source": "s3://b/hero-wan.safetensors"})
    plan = gens.prepare(request)
    assert plan.path == "direct" and plan.template is not None and plan.template.name == "wan22_t2v" and plan.key_frame is None and len(plan.loras) == 2  # both experts
    plan = gens.prepare(GenerationCreate(template="wan22_t2v", character_id="nobody"))
    assert plan.path == "fallback" and "has no LoRA" in plan.path_reason and plan.loras == []
    assert gens.prepare(GenerationCreate(template="sdxl_txt2img", character_id="hero")).path is None  # an image: no path


def test_a_wan22_pair_puts_each_file_on_its_expert(db: Database, tmp_path: Path) -> None:
    add = db.add_lora
    pair = add({"name": "hero pair", "owner_kind": "character", "owner_id": "duo", "status": "ready", "family": "wan",
                "variant": "14B", "source": "s3://b/high.safetensors", "sha256": "a" * 64,
                "low_noise_source": "s3://b/low.safetensors", "low_noise_sha256": "b" * 64})
    gens = _gens(db, tmp_path)
    placed = gens.prepare(GenerationCreate(template="wan22_t2v", character_id="duo", lora_strength=0.9,
                                           expert_strengths={"low_noise": 0.4})).loras
    assert [(lora.source, lora.sha256, lora.source_nodes, lora.strength_model) for lora in placed] == [
        ("s3://b/high.safetensors", "a" * 64, ("75",), 0.9), ("s3://b/low.safetensors", "b" * 64, ("76",), 0.4)]
    assert {lora.name for lora in placed} == {f"lora-{pair.id}"}  # one unit: dropped or routed together
    request = GenerationCreate(template="wan21_t2v", character_id="duo")  # a graph whose experts nobody named
    with pytest.raises(GenerationRefused, match="is a Wan 2.2 expert pair; the graph does not say which model is which expert"):
        gens.prepare(request.model_copy(update={"lora_policy": "strict"}))
    single = add({"name": "one file", "family": "wan", "variant": "14B", "status": "ready", "source": "s3://b/one.safetensors"})
    placed = gens.prepare(GenerationCreate(template="wan22_i2v", loras=[{"lora_id": single.id}], experts=["high_noise"])).loras
    assert [lora.source_nodes for lora in placed] == [("75",)]  # a single file on the expert the caller names


def test_settings_are_trimmed_and_contradictions_refused(tmp_path: Path) -> None:
    configured = Settings.from_env({"LORA_BRIDGE_API_KEYS": " k1, k2 ,", "LORA_BRIDGE_ALLOWED_HOSTS": "a.com , *.b.com",
                                    "LORA_BRIDGE_CACHE": str(tmp_path), "LORA_BRIDGE_COST_PER_HOUR": " 2.5 "})
    assert configured.api_keys == ("k1", "k2") and configured.allowed_hosts == ("a.com", "*.b.com")
    assert configured.cost_per_hour == 2.5 and configured.store_path() == tmp_path / "store"
    assert configured.retry_delays == (2.0, 4.0, 8.0)
    assert Settings.from_env({"LORA_BRIDGE_RETRY_DELAYS": "1, 3"}).retry_delays == (1.0, 3.0)
    assert Settings.from_env({"LORA_BRIDGE_RETRY_DELAYS": "0"}).retry_delays == ()
    assert configured.store_path(tmp_path / "models") == tmp_path / "models" / "lora_bridge_store"
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert Settings.from_env({"LORA_BRIDGE_POD_TOKEN_FILE": str(secret)}).pod_token == "from-a-file"
    for env, problem in [({"LORA_BRIDGE_POD_TOKEN": "a", "LORA_BRIDGE_POD_TOKEN_FILE": str(secret)}, "not both"),
                         ({"LORA_BRIDGE_MAX_MB": "lots"}, "not a number"), ({"LORA_BRIDGE_COST_PER_HOUR": "-1"}, ">= 0"),
                         ({"LORA_BRIDGE_ALLOW_PICKLE": "maybe"}, "LORA_BRIDGE_ALLOW_PICKLE"),
                         ({"LORA_BRIDGE_HTTP_AUTH": "[1]"}, "JSON object"),
                         ({"LORA_BRIDGE_RETRY_DELAYS": "2,soon"}, "seconds separated by commas"),
                         ({"LORA_BRIDGE_RETRY_DELAYS": "2,-4"}, "between 0 and 3600")]:
        with pytest.raises(ConfigError, match=problem):
            Settings.from_env(env)


def test_cancelling_a_job_that_no_runner_holds(db: Database, tmp_path: Path) -> None:
    gens = _gens(db, tmp_path)
    job = db.add_job({"template": "sd15_txt2img"}, {}, [("queued", {})])
    gens.cancel(job)
    record = db.get_job(job)
    assert record.status == "cancelled" and record.result["reason"] == "cancelled by the caller"
