"""Shared fixtures: generated weights and one real ComfyUI server per test process (per xdist worker)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from comfyui_lora_bridge.testing.file_server import FaultyFileServer
from comfyui_lora_bridge.testing.postgres import Cluster
from comfyui_lora_bridge.testing.server import free_port
from comfyui_lora_bridge.testing.weights import (
    LoraSpec,
    cached_checkpoint,
    cached_lora,
)
from moto.server import ThreadedMotoServer
from support import S3_ENV, pack_pod

# The modules that take longest, longest first (``--durations`` of both legs, 2026-12-07): with the
# suite on two workers (``.ci/test``: pytest-xdist, a file at a time), the long ones start at once and
# the short ones fill in around them, so neither worker idles at the end of a leg.
LONGEST_FIRST = ("families", "graph_editor", "gpu_check", "hotswap", "inputs", "service", "character_video",
                 "nodes", "fleet", "training")


def _rank(item: pytest.Item) -> int:
    name = Path(str(item.path)).stem.removeprefix("test_").removesuffix("_e2e")
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (``LONGEST_FIRST``); within a module with a ``family_group(item)``, its
    tests one model family after another (each family's models loaded once, not once per test
    function); the rest keep their order."""
    first: dict[tuple[str, str], int] = {}
    keys = []
    for index, item in enumerate(items):
        group_of = getattr(getattr(item, "module", None), "family_group", None)
        group = group_of(item) if group_of else None
        key = index if group is None else first.setdefault((item.nodeid.split("::")[0], group), index)
        keys.append((_rank(item), key, index))
    items[:] = [item for _, item in sorted(zip(keys, items), key=lambda pair: pair[0])]


@dataclass(frozen=True)
class Weights:
    checkpoint: Path
    loras: dict[str, Path]


@pytest.fixture(scope="session")
def weights() -> Weights:
    specs = {layout: LoraSpec(layout=layout) for layout in ("kohya", "peft", "loha")}
    specs["kohya_b"] = LoraSpec(layout="kohya", seed=7, trigger="zwx", output_name="second_lora")
    return Weights(cached_checkpoint("tiny"), {k: cached_lora(s) for k, s in specs.items()})


@dataclass(frozen=True)
class S3:
    endpoint: str
    client: object


@pytest.fixture(scope="session")
def s3() -> S3:
    """moto's S3 server over HTTP on loopback, with bucket ``loras``."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    mp = pytest.MonkeyPatch()
    for key, value in S3_ENV.items():
        mp.setenv(key, value)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="loras")
    yield S3(endpoint, client)
    mp.undo()
    server.stop()


@pytest.fixture(scope="session")
def file_server():
    """The misbehaving-on-request HTTP file server, shared by the run."""
    with FaultyFileServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def comfy(weights: Weights, s3: S3, tmp_path_factory):
    """One ComfyUI with the node pack for each test process (``pack_pod``)."""
    pod = pack_pod(weights, s3)
    try:
        pod.start()
        yield pod
    finally:
        pod.cleanup()


@pytest.fixture(scope="session")
def object_info(comfy) -> dict:
    """The real pod's /object_info (every node's inputs, types and outputs)."""
    import json
    import urllib.request

    with urllib.request.urlopen(comfy.url + "/object_info") as resp:
        return json.load(resp)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A PostgreSQL server for the run (``Cluster.new_database`` gives each user its own database)."""
    cluster = Cluster(tmp_path_factory.mktemp("postgres")).start()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A new database of each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()
