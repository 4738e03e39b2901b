"""The GPU check's CPU dry run: the script a lent GPU machine runs must still run, end to end.

``benchmarks/gpu/check.py --dry-run`` is the same script at the test sizes on the CPU: real ComfyUI
modules (the version under test), every LoRA path it compares, the report, and the training
benchmark through a real pod. Flux is left out here: its code path is the diffusion-model one Wan
takes, and at Flux's fixed width it is the slowest part.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.comfy, pytest.mark.gpu_check]


def test_gpu_check_dry_run_measures_every_path_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/check.py"), "--dry-run", "--out", str(out),
                           "--only", "sdxl,wan,train", "--work", str(tmp_path / "work"), "--budget", "500"],
                          capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert not results["skipped"]
    for bench in ("sdxl", "wan"):
        phase = results["phases"][f"{bench}: dynamic VRAM off"]
        paths = phase["paths"]
        assert {"stock", "merge", "hotswap"} <= set(paths)  # native only where ComfyUI has LoraLoaderBypass
        for figures in paths.values():
            assert figures["step_ms"] > 0 and figures["jobs_per_min"] > 0
        # our merge is stock's math; hot-swap adds the same terms at run time
        deviation = phase["deviation"]["two stacked (0.7 then 0.5)"]
        assert deviation["merge"] < 1e-3 and deviation["hotswap"] < 0.05
        assert set(phase["rank16"]) == {"merge", "hotswap"} and all(f["step_ms"] > 0 for f in phase["rank16"].values())
    training = results["phases"]["training: bridge vs direct"]
    assert any(line.startswith("steps per second") for line in training["lines"])
    report = (out / "results.md").read_text()
    assert "DRY RUN" in report and "our hot-swap" in report and "steps per second" in report
