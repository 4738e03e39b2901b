"""The pack as the Comfy Registry receives it: comfy-cli's own ``comfy node validate`` accepts the
repository, and ``comfy node pack`` makes an archive that holds what a pod needs (the entry point,
nodes, web, the bridge modules the nodes import, requirements.txt) and none of the tests,
benchmarks or the generated-weights toolkit (``.comfyignore``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".venv-comfy-cli" / "bin" / "comfy"


def _comfy(*args: str, cwd: Path) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd.parent), "DO_NOT_TRACK": "1"}
    done = subprocess.run([str(COMFY), "--skip-prompt", "--no-enable-telemetry", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_comfy_cli_validates_and_packs_what_a_pod_needs(tmp_path: Path) -> None:
    if not COMFY.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{COMFY} is missing: .ci/setup makes it")
        pytest.skip(f"{COMFY} is missing: run .ci/setup")
    # the repository as a clone has it: tracked files and new ones git does not ignore
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split()
    repo = tmp_path / "comfyui-lora-bridge"
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    assert "validation checks passed" in _comfy("node", "validate", cwd=repo)
    _comfy("node", "pack", cwd=repo)
    names = set(zipfile.ZipFile(repo / "node.zip").namelist())
    needed = {"__init__.py", "requirements.txt", "pyproject.toml", "nodes/lora_files.py", "nodes/routes.py",
              "web/lora_bridge.js", "bridge/lorafiles/fetch.py", "bridge/pack_protocol.py"}
    assert needed <= names, needed - names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "testing/", ".ci/"))]
