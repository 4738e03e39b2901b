"""The database on both back ends (SQLite, and a real PostgreSQL server): migrations, leases, events."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from comfyui_lora_bridge.bridge.errors import DatabaseUnavailable, NotFound
from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase, Database
from comfyui_lora_bridge.bridge.jobs.db_backends import PostgresBackend, open_backend
from comfyui_lora_bridge.bridge.jobs.migrations import (
    LATEST,
    migrate,
    schema_version,
)
from comfyui_lora_bridge.bridge.jobs.presets import PresetStore
from comfyui_lora_bridge.bridge.jobs.previews import PreviewStore, Sweep
from comfyui_lora_bridge.bridge.jobs.requests import LoraRef
from comfyui_lora_bridge.bridge.jobs.states import JobState


def test_a_database_of_the_previous_schema_upgrades_in_place_with_its_data(db_url: str) -> None:
    old = open_backend(db_url)
    assert migrate(old, target=LATEST - 1) == LATEST - 1
    with old.tx() as db:  # what the previous version wrote: a LoRA (no blake3 yet), a running job nobody holds, its events
        db.execute("INSERT INTO loras (id, name, status, family, variant, source, size, metadata, created, updated) "
                   "VALUES ('l1', 'kept', 'ready', 'wan', '14B', 's3://b/k.safetensors', 5000000000, '{}', 1.5, 1.5)")
        db.execute("INSERT INTO jobs VALUES ('j1', 'running', '{\"template\": \"sd15_txt2img\"}', 'http://pod', 'p1', "
                   "'{\"started_at\": 2.0}', 1.0, 2.0, NULL, NULL)")
        db.execute("INSERT INTO events VALUES ('j1', 1, 'queued', '{}', 1.0), ('j1', 2, 'running', '{}', 2.0)")
    old.close()

    new = Database(db_url, replica="r1")
    assert schema_version(new.backend) == LATEST
    lora = new.get_lora("l1")
    assert (lora.name, lora.variant, lora.size, lora.blake3) == ("kept", "14B", 5000000000, None)
    assert [t for _, t, _ in new.events("j1")] == ["queued", "running"]
    claimed = new.claim()  # a job from before leases belongs to nobody: the first replica takes it on
    assert [(j.id, j.prompt_id, j.owner) for j in claimed] == [("j1", "p1", "r1")]
    assert Database(db_url, replica="r2").claim() == []  # migrating again changes nothing; the lease holds


def test_presets_are_saved_replaced_listed_and_removed_by_any_replica(db_url: str) -> None:
    async def scenario() -> None:
        one, two = (PresetStore(AsyncDatabase(Database(db_url, replica=r))) for r in ("a", "b"))
        first = await one.put("look", [LoraRef(name="x", strength_model=0.5), LoraRef(character_id=42)], "first")
        again = await two.put("look", [LoraRef(lora_id="abc", strength_clip=0.25)])
        assert (again.created, again.description, again.loras) == (first.created, None, [{"lora_id": "abc",
                                                                                              "strength_model": 1.0,
                                                                                              "strength_clip": 0.25}])
        assert await one.refs("look") == [LoraRef(lora_id="abc", strength_clip=0.25)]
        await two.put("another", [LoraRef(brand_id="b1")])
        assert [p.name for p in await one.all()] == ["another", "look"]
        await one.delete("look")
        for missing in (two.get("look"), two.delete("look")):
            with pytest.raises(NotFound):
                await missing

    asyncio.run(scenario())


def test_tags_filter_last_use_follows_jobs_and_a_sweep_lasts_until_the_lora_changes(db_url: str) -> None:
    db = Database(db_url)
    styled = db.add_lora({"name": "style", "tags": ["studio", "winter look"], "sha256": "a" * 64, "family": "sd15"})
    db.add_lora({"name": "plain"})
    assert [r.name for r in db.list_loras(tag="winter look")] == ["style"] and db.list_loras(tag="winter") == []
    assert db.get_lora(styled.id).last_used is None
    before = time.time()
    db.add_job({"template": "t"}, {}, [("queued", {})], uses=[styled.id, styled.id])
    assert db.get_lora(styled.id).last_used >= before

    async def sweeps() -> None:
        store = PreviewStore(AsyncDatabase(db))
        lora = db.get_lora(styled.id)
        sweep = Sweep(lora.id, [(0.0, "j0"), (0.5, "j1"), (1.0, "j2")], "sd15_txt2img", "ohwx, a portrait", time.time())
        await store.keep(lora, sweep)
        assert await store.current(db.update_lora(lora.id, {"tags": ["renamed"]})) == sweep  # tags change no image
        assert await store.current(db.update_lora(lora.id, {"trigger_word": "sks"})) is None  # the prompt changed
        await store.keep(db.get_lora(lora.id), sweep)
        assert await store.current(db.update_lora(lora.id, {"sha256": "b" * 64})) is None  # another file
        await store.keep(db.get_lora(lora.id), sweep)
        db.delete_lora(lora.id)
        with db.backend.read() as tx:
            assert tx.execute("SELECT COUNT(*) FROM lora_previews").fetchone()[0] == 0

    asyncio.run(sweeps())


def test_an_unfinished_job_is_claimed_by_exactly_one_replica_once_its_lease_runs_out(db_url: str) -> None:
    a = Database(db_url, replica="a", lease_s=0.5)
    job_ids = [a.add_job({"n": i}, {}, [("queued", {})]) for i in range(6)]
    a.transition(job_ids[0], JobState.PREPARING, "preparing")
    a.transition(job_ids[0], JobState.CANCELLED, "cancelled")  # ended: nobody claims it
    others = [Database(db_url, replica=f"r{i}", lease_s=5) for i in range(4)]
    assert [o.claim() for o in others] == [[]] * 4  # a's leases are live
    time.sleep(0.6)
    claims: dict[str, list[str]] = {}

    def claim(replica: Database) -> None:
        claims[replica.replica] = [job.id for job in replica.claim()]

    threads = [threading.Thread(target=claim, args=(o,)) for o in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = sorted(i for ids in claims.values() for i in ids)
    assert taken == sorted(job_ids[1:]), claims  # each unfinished job once, by one replica
    assert a.renew(set(job_ids[1:])) == set(job_ids[1:])  # a learns at its next beat that it lost them all
    owner = next(r for r, ids in claims.items() if job_ids[1] in ids)
    holder = next(o for o in others if o.replica == owner)
    assert holder.renew({job_ids[1]}) == set()
    holder.release()  # a graceful stop: claimable at once, by anyone (even the same name after a restart)
    assert [j.id for j in Database(db_url, replica="z").claim() if j.id == job_ids[1]] == [job_ids[1]]


def test_two_replicas_writing_one_jobs_events_get_one_sequence(db_url: str) -> None:
    a, b = Database(db_url, replica="a"), Database(db_url, replica="b")
    job_id = a.add_job({}, {}, [("queued", {})])

    def write(db: Database, n: int) -> None:
        for i in range(n):
            db.add_event(job_id, "progress", {"by": db.replica, "i": i})

    threads = [threading.Thread(target=write, args=(db, 40)) for db in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = b.events(job_id)
    assert [seq for seq, _, _ in events] == list(range(1, 82))
    assert sorted((d["by"], d["i"]) for _, t, d in events if t == "progress") == sorted(
        (r, i) for r in "ab" for i in range(40))


@pytest.mark.postgres
def test_postgres_notifies_every_replica_of_each_committed_event(postgres) -> None:
    url = postgres.new_database()
    writer = Database(url, replica="w")
    job_id = writer.add_job({}, {}, [("queued", {})])
    backend = PostgresBackend(url)

    async def listen() -> list[str]:
        heard: list[str] = []
        listening = asyncio.Event()
        task = asyncio.ensure_future(backend.listen(heard.append, lambda on: listening.set() if on else None))
        await asyncio.wait_for(listening.wait(), 10)
        await asyncio.get_running_loop().run_in_executor(None, lambda: [writer.add_event(job_id, "progress", {"i": i})
                                                                         for i in range(3)])
        with pytest.raises(RuntimeError):  # a rolled-back write notifies nobody
            with writer.tx() as db:
                writer._insert_event(db, job_id, "never", {})
                raise RuntimeError("rolled back")
        deadline = time.monotonic() + 5
        while len(heard) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        task.cancel()
        return heard

    assert asyncio.run(listen()) == [job_id] * 3
    assert [t for _, t, _ in writer.events(job_id)] == ["queued", "progress", "progress", "progress"]


@pytest.mark.postgres
def test_an_unreachable_database_is_a_clear_error(postgres) -> None:
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        Database(f"postgresql://postgres@127.0.0.1:{postgres.port + 1}/none")


@pytest.mark.postgres
def test_the_service_answers_503_while_its_database_is_away_and_recovers(tmp_path) -> None:
    from comfyui_lora_bridge.testing.postgres import Cluster
    from service_harness import Service

    cluster = Cluster(tmp_path).start()
    service = Service(["http://127.0.0.1:9"], tmp_path, db_url=cluster.url())
    try:
        service.start()
        assert service.call("POST", "/v1/loras", {"name": "kept", "family": "sd15"})[0] == 201
        cluster.stop()
        status, health = service.call("GET", "/healthz", key=None)
        assert (status, health["ok"], health["database"]) == (503, False, "unreachable")
        status, err = service.call("GET", "/v1/loras")
        assert status == 503 and err["error"]["type"] == "database_unavailable"
        cluster.start()
        deadline = time.monotonic() + 60  # the connection pool reconnects by itself (with its own backoff)
        while service.call("GET", "/healthz", key=None)[0] != 200:
            assert time.monotonic() < deadline, "the service did not reconnect to its database"
            time.sleep(0.5)
        status, listing = service.call("GET", "/v1/loras")
        assert status == 200 and [lora["name"] for lora in listing["loras"]] == ["kept"]
    finally:
        service.kill()
        cluster.remove()
