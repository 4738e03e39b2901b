"""The Kubernetes manifests (``deploy/kubernetes``) against the code they configure: every variable they set is
one the bridge or the pack reads, the bridge's command line parses, the probes and the preStop hook call
routes that exist, the autoscaler's query names metrics the bridge exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from comfyui_lora_bridge.bridge.cli import build_parser
from comfyui_lora_bridge.bridge.http.app import ROUTES
from comfyui_lora_bridge.bridge.jobs.metrics import JobMetrics, render
from comfyui_lora_bridge.bridge.pack_protocol import ROUTE_DRAIN

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"


def _documents() -> list[dict]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(name: str) -> list[dict]:
    return [c for doc in _documents() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name
            for c in doc["spec"]["template"]["spec"]["containers"]]


def test_every_variable_the_manifests_set_is_read_by_the_code() -> None:
    code = (ROOT / "bridge" / "settings.py").read_text()
    names = {env["name"] for doc in _documents() if doc["kind"] == "Deployment"
             for c in doc["spec"]["template"]["spec"]["containers"] for env in c.get("env", [])}
    ours = {re.sub(r"_FILE$", "", n) for n in names if n.startswith("LORA_BRIDGE_")}
    assert ours and all(f'"{name}"' in code for name in ours), sorted(n for n in ours if f'"{n}"' not in code)


def test_the_bridge_command_line_parses_and_its_probes_exist() -> None:
    (bridge,) = _containers("lora-bridge")
    args = build_parser().parse_args(bridge["args"][1:])
    assert args.command == "serve" and args.port == 8288
    paths = {spec.path for spec, _ in ROUTES if spec.method == "GET"}
    assert {bridge[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")} <= paths


def test_the_pods_drain_before_they_stop_and_the_autoscaler_reads_our_metrics() -> None:
    (pod,) = _containers("comfyui-pods")
    hook = " ".join(pod["lifecycle"]["preStop"]["exec"]["command"])
    wait = int(re.search(r"wait_s=(\d+)", hook).group(1))
    assert f"{ROUTE_DRAIN}?wait_s=" in hook and "POST" in hook
    spec = next(d for d in _documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "comfyui-pods")["spec"]
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > wait  # Kubernetes waits for the drain
    (scaler,) = [d for d in _documents() if d["kind"] == "ScaledObject"]
    page = render("r", {}, JobMetrics(), [], [], 0.0)
    exported = set(re.findall(r"^# TYPE (\w+)", page, re.M))
    queried = set(re.findall(r"\b(lora_bridge_\w+)", scaler["spec"]["triggers"][0]["metadata"]["query"]))
    assert queried and queried <= exported, queried - exported
    assert scaler["spec"]["minReplicaCount"] == 0  # scale from zero: jobs wait for the first pod
