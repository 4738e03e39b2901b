"""Training LoRAs through the bridge on the real ComfyUI (CPU): ComfyUI's own dataset and training
nodes train the tiny SD1.5 checkpoint; the bridge registers, verifies, validates and cleans up."""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from comfyui_lora_bridge.bridge.jobs.database import Database
from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file
from comfyui_lora_bridge.bridge.pack_protocol import TRAINING_DATASETS, TRAINING_OUTPUTS
from PIL import Image
from service_harness import EXE, KEY, Service
from support import CHECKPOINT, POD_TOKEN, configured_pod

pytestmark = pytest.mark.comfy
# tiny on purpose: 64 px, rank 4, a handful of fp32 steps (a high learning rate, so that the effect shows)
TRAIN = {"name": "ohwx character", "trigger_word": "ohwx", "character_id": "trained-char", "checkpoint": CHECKPOINT,
         "preset": "fast", "steps": 4, "rank": 4, "resolution": 64, "learning_rate": 0.02, "training_dtype": "fp32",
         "validation_params": {"steps": 2, "width": 64, "height": 64}}


def png(seed: int, size: tuple[int, int] = (80, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def dataset(n: int = 3) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        files[f"photos/img{i}.png"] = png(i)
        files[f"photos/img{i}.txt"] = f"a portrait, pattern {i}".encode()
    return files


@pytest.fixture(scope="module")
def service(comfy, s3, tmp_path_factory):
    svc = Service([comfy.url], tmp_path_factory.mktemp("training-svc"), s3.endpoint).start()
    yield svc
    svc.kill()


def train(service: Service, files: dict[str, bytes] | bytes, **fields) -> tuple[int, dict]:
    data = files if isinstance(files, bytes) else zip_of(files)
    return service.form("/v1/trainings/upload", {"request": json.dumps({**TRAIN, **fields})}, {"dataset": ("set.zip", data)})


def pod_files(comfy, job_id: str) -> list[Path]:
    """Whatever of the job is left on the pod (its dataset, its trained file)."""
    roots = (comfy.base_dir / "input" / TRAINING_DATASETS, comfy.base_dir / "output" / TRAINING_OUTPUTS)
    return [p for root in roots if root.exists() for p in root.iterdir() if job_id in p.name]


def image(service: Service, path: str) -> np.ndarray:
    status, data = service.call("GET", path)
    assert status == 200
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_a_trained_lora_is_registered_ready_and_acts(service, comfy, s3, tmp_path) -> None:
    status, started = train(service, dataset(3))
    assert status == 202 and started["lora"]["status"] == "training", started  # the entry exists at once
    job = service.wait_end(started["id"], timeout=600)
    assert job["status"] == "succeeded", job
    assert job["settings"]["steps"] == 4 and job["dataset"]["images"] == 3 and job["gpu_seconds"] > 0 and "cost" in job

    # the events, over SSE, in the order the job went through them
    events = service.events(started["id"])
    types = [t for _, t, _ in events]
    order = ["queued", "preparing", "dataset", "submitted", "running", "loss", "stored", "validating", "validated",
             "cleaned", "succeeded"]
    assert [t for t in types if t in order] == order, types
    steps = [d["value"] for _, t, d in events if t == "progress" and d.get("node") == "6" and "stage" not in d]
    assert steps == [1, 2, 3, 4], steps  # one per training step, in order (TrainLoraNode is node 6)
    assert types.index("running") < types.index("progress") < types.index("loss")
    validation = [i for i, (_, t, d) in enumerate(events) if t == "progress" and d.get("stage") == "validation"]
    assert validation and types.index("validating") < validation[0] < types.index("validated")
    loss = next(d for _, t, d in events if t == "loss")
    assert len(loss["loss"]) == 4 and all(np.isfinite(loss["loss"]))

    # the entry: ready, with the file verified and kept, trigger word in the file's own header
    status, lora = service.call("GET", f"/v1/loras/{started['lora']['id']}")
    assert status == 200 and lora["status"] == "ready" and lora["family"] == "sd15" and lora["trigger_word"] == "ohwx", lora
    assert lora["source"].startswith("s3://loras/")  # kept where uploads go (the upload bucket here)
    kept = tmp_path / "trained.safetensors"
    kept.write_bytes(s3.client.get_object(Bucket="loras", Key=lora["source"].removeprefix("s3://loras/"))["Body"].read())
    info = inspect_file(kept)
    assert info.family == "sd15" and info.trigger_words == ["ohwx"] and info.sha256 == lora["sha256"] and info.rank == 4
    assert lora["metadata"]["training_job"] == started["id"] and lora["metadata"]["validation_image"] == job["outputs"][0]
    validation = image(service, f"/v1/trainings/{started['id']}/outputs/0")
    assert validation.shape == (64, 64, 3) and validation.std() > 1

    # the dataset folder was made after ComfyUI started and still passed its dataset node's validation;
    # both it and the trained file are gone from the pod
    assert pod_files(comfy, started["id"]) == []

    # a generation with the new LoRA differs from one without it
    request = {"template": "sd15_txt2img", "params": {"checkpoint": CHECKPOINT, "steps": 2, "width": 64, "height": 64, "seed": 5}}
    outs = []
    for extra in ({"character_id": "trained-char", "lora_strength": 1.0}, {}):
        status, rec = service.call("POST", "/v1/generations?wait=true", {**request, **extra})
        assert status == 200 and rec["status"] == "succeeded", rec
        outs.append(image(service, f"/v1/generations/{rec['id']}/outputs/0"))
    assert np.abs(outs[0] - outs[1]).mean() > 0.5


BAD_DATASETS = {
    "empty zip": (zip_of({}), "0 image(s)"),
    "not a zip": (b"PK\x03\x04 this is not really a zip", "not a readable zip"),
    "a non-image file": (zip_of({**dataset(1), "notes.pdf": b"%PDF-1.4"}), "'notes.pdf' is neither an image"),
    "a ../ path": (zip_of({**dataset(1), "../evil.png": png(9)}), "'..' would leave the dataset folder"),
    "an absolute path": (zip_of({**dataset(1), "/etc/evil.txt": b"x"}), "absolute paths"),
    "a 0-byte image": (zip_of({**dataset(1), "empty.png": b"", "empty.txt": b"a portrait"}), "'empty.png' is empty (0 bytes)"),
    "a corrupt image": (zip_of({**dataset(1), "cut.png": png(3)[:60], "cut.txt": b"a portrait"}), "'cut.png' cannot be decoded"),
    "a missing caption": (zip_of({"a.png": png(1), "a.txt": b"a portrait", "b.png": png(2)}), "have no caption file"),
    "a tiny image": (zip_of({"a.png": png(1, (16, 16)), "a.txt": b"a portrait"}), "each side must be 64"),
}


@pytest.mark.bridge_logic  # the bridge refuses it before any pod is asked: first leg only
@pytest.mark.parametrize("case", BAD_DATASETS)
def test_a_bad_dataset_is_refused_and_leaves_nothing(service, comfy, case) -> None:
    data, message = BAD_DATASETS[case]
    before = Database(str(service.db_path)).unfinished_jobs(), service.call("GET", "/v1/loras")[1]["loras"]
    status, err = train(service, data, name=f"bad {case}")
    assert status == 422 and err["error"]["type"] == "invalid_dataset" and message in err["error"]["message"], err
    assert (Database(str(service.db_path)).unfinished_jobs(), service.call("GET", "/v1/loras")[1]["loras"]) == before
    datasets = comfy.base_dir / "input" / TRAINING_DATASETS
    assert not datasets.exists() or not any(datasets.iterdir())  # nothing reached the pod


@pytest.mark.bridge_logic  # the bridge's own schema: first leg only
def test_a_request_the_schema_refuses_names_the_field(service, tmp_path) -> None:
    status, err = train(service, dataset(1), rank=0)
    assert status == 400 and "rank" in err["error"]["message"], err
    status, err = train(service, dataset(1), template="sd15_txt2img")
    assert status == 400 and "not a training template" in err["error"]["message"], err
    # the command line says the same
    bad = tmp_path / "bad.zip"
    bad.write_bytes(zip_of({"a.png": png(1)}))
    env = {"PATH": "/usr/bin:/bin", "LORA_BRIDGE_URL": service.url, "LORA_BRIDGE_API_KEY": KEY, "HOME": str(tmp_path)}
    run = subprocess.run([EXE, "train", str(bad), "--name", "cli", "--trigger-word", "ohwx", "--checkpoint", CHECKPOINT],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "1 image(s) have no caption file" in run.stderr, run.stderr


def test_cancelling_during_training_fails_the_entry_and_cleans_the_pod(service, comfy) -> None:
    status, started = train(service, dataset(2), name="to be cancelled", steps=2000, character_id="cancelled-char")
    assert status == 202, started
    deadline = time.monotonic() + 300
    while not any(t == "progress" for _, t, _ in service.peek(started["id"])):
        assert time.monotonic() < deadline, service.peek(started["id"])
        time.sleep(0.1)
    status, job = service.call("DELETE", f"/v1/trainings/{started['id']}")
    assert status == 200
    job = service.wait_end(started["id"])
    assert job["status"] == "cancelled", job
    status, lora = service.call("GET", f"/v1/loras/{started['lora']['id']}")
    assert lora["status"] == "failed" and lora["metadata"]["failure"] == "cancelled by the caller" and lora["source"] is None
    assert pod_files(comfy, started["id"]) == []
    with urllib.request.urlopen(comfy.url + "/queue") as resp:
        queue = json.load(resp)
    assert not queue["queue_running"] and not queue["queue_pending"]  # the training prompt was stopped


def test_the_pod_dataset_route_checks_for_itself(comfy) -> None:
    """The pod does not trust its caller: token, job name and the zip's contents are checked there too."""
    def put(job: str, data: bytes, token: str | None = POD_TOKEN) -> tuple[int, dict]:
        headers = {"Content-Type": "application/zip", **({"Authorization": f"Bearer {token}"} if token else {})}
        request = urllib.request.Request(f"{comfy.url}/lora_bridge/datasets/{job}", data=data, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    assert put("route-check", zip_of(dataset(1)), token=None)[0] == 401
    status, err = put("route-check", zip_of({**dataset(1), "../../escape.png": png(1)}))
    assert status == 422 and "'..' would leave" in err["error"]["message"]
    assert put("..%2Fescape", zip_of(dataset(1)))[0] in (400, 404)
    big = {**dataset(1), "photos/big.png": png(7, (1024, 1024)), "photos/big.txt": b"a portrait, large"}  # a body of many reads
    status, ok = put("route-check", zip_of(big))
    folder = comfy.base_dir / "input" / TRAINING_DATASETS / "route-check"
    assert status == 200 and ok["images"] == 2 and sorted(p.name for p in folder.iterdir()) == ["0001.png", "0001.txt", "0002.png", "0002.txt"]
    assert sorted(p.read_bytes() for p in folder.glob("*.png")) == sorted(v for k, v in big.items() if k.endswith(".png"))
    assert {p.read_text() for p in folder.glob("*.txt")} == {"a portrait, pattern 0", "a portrait, large"}
    request = urllib.request.Request(f"{comfy.url}/lora_bridge/datasets/route-check", method="DELETE",
                                     headers={"Authorization": f"Bearer {POD_TOKEN}"})
    with urllib.request.urlopen(request) as resp:
        assert json.load(resp)["removed"] and not folder.exists()


@pytest.mark.bridge_logic  # which job moves and which fails is the bridge's decision: first leg only
def test_a_pod_that_dies_mid_training_fails_the_job_or_moves_it_when_retries_were_asked(comfy, weights, s3, tmp_path) -> None:
    """Two services share a pod that dies: the training running there moves to the other pod
    (``retries: 1``) and succeeds; the one waiting in its queue (``retries: 0``) fails cleanly."""
    doomed = configured_pod(weights, s3.endpoint)
    moving = Service([doomed.url, comfy.url], tmp_path, s3.endpoint)
    failing = Service([doomed.url], tmp_path / "second", s3.endpoint)
    try:
        doomed.start()
        moving.start()
        failing.tmp.mkdir()
        failing.start()
        status, moved = train(moving, dataset(2), name="moved", steps=20, retries=1, character_id="moved-char")
        assert status == 202, moved
        moving.wait_for(moved["id"], "progress", timeout=120)
        status, lost = train(failing, dataset(2), name="lost", steps=20, character_id="lost-char")
        assert status == 202, lost
        failing.wait_for(lost["id"], "submitted", timeout=60)  # waiting in the pod's queue
        doomed.kill()
        job = failing.wait_end(lost["id"], timeout=120)
        assert job["status"] == "failed" and "after 0 retries" in job["reason"] and doomed.url in job["reason"], job
        status, lora = failing.call("GET", f"/v1/loras/{lost['lora']['id']}")
        assert lora["status"] == "failed" and lora["metadata"]["failure"] == job["reason"] and lora["source"] is None
        job = moving.wait_end(moved["id"], timeout=300)
        types = [t for _, t, _ in moving.events(moved["id"])]
        assert job["status"] == "succeeded" and "failover" in types and types.count("dataset") == 2, (job, types)
        status, lora = moving.call("GET", f"/v1/loras/{moved['lora']['id']}")
        assert lora["status"] == "ready"
        assert pod_files(comfy, moved["id"]) == []  # the live pod is clean (the dead one took its files with it)
    finally:
        for svc in (moving, failing):
            svc.kill()
        doomed.cleanup()


@pytest.mark.bridge_logic  # the bridge fetches and checks the dataset: first leg only
def test_a_dataset_by_s3_prefix_or_urls_is_fetched_under_the_source_policy(service, s3) -> None:
    for name, data in dataset(2).items():
        s3.client.put_object(Bucket="loras", Key=f"datasets/set-a/{name.split('/')[-1]}", Body=data)
    request = {**TRAIN, "name": "from s3", "dataset_s3_prefix": "s3://loras/datasets/set-a/", "steps": 2000}
    status, started = service.call("POST", "/v1/trainings", request)
    assert status == 202, started
    service.wait_for(started["id"], "dataset")
    assert next(d for _, t, d in service.peek(started["id"]) if t == "dataset")["images"] == 2  # both pairs reached the pod
    service.call("DELETE", f"/v1/trainings/{started['id']}")
    assert service.wait_end(started["id"])["status"] == "cancelled"
    s3.client.put_object(Bucket="loras", Key="datasets/set-b/a.png", Body=png(1))  # no caption
    status, err = service.call("POST", "/v1/trainings", {**request, "dataset_s3_prefix": "s3://loras/datasets/set-b/"})
    assert status == 422 and "have no caption file" in err["error"]["message"], err
    status, err = service.call("POST", "/v1/trainings", {**TRAIN, "dataset_urls": ["http://169.254.169.254/latest/a.png"]})
    assert status == 400 and err["error"]["type"] == "source_refused", err
    status, err = service.call("POST", "/v1/trainings", TRAIN)
    assert status == 422 and "no dataset" in err["error"]["message"], err


def test_a_training_survives_a_restart_of_the_bridge(service, comfy) -> None:
    """SIGTERM mid-training leaves it running on the pod; the next start follows it to the end."""
    status, started = train(service, dataset(2), name="restarted", steps=20, character_id="restarted-char")
    assert status == 202, started
    deadline = time.monotonic() + 120
    while not any(t == "progress" and d.get("node") == "6" for _, t, d in service.peek(started["id"])):
        assert time.monotonic() < deadline, service.peek(started["id"])
        time.sleep(0.1)
    assert service.stop() == 0
    service.start()
    job = service.wait_end(started["id"], timeout=300)
    types = [t for _, t, _ in service.events(started["id"])]
    assert job["status"] == "succeeded" and types.index("detached") < types.index("resumed") < types.index("stored"), (job, types)
    status, lora = service.call("GET", f"/v1/loras/{started['lora']['id']}")
    assert lora["status"] == "ready" and pod_files(comfy, started["id"]) == []
