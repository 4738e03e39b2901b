"""The GPU check: every GPU figure the benchmarks owe, in one command that ends within its budget.

    python benchmarks/gpu/check.py --out DIR [--budget 420] [--only sdxl,flux,train,wan]
    python benchmarks/gpu/check.py --out DIR --dry-run      (CPU, test sizes: what CI runs)

Phases, most wanted first, each in a process of its own and started only while the budget allows
(what is cut is named in the report; ``--only`` runs the rest later): SDXL (2.6 B UNet, real CLIP-L/G,
fp16) and Flux.1 (12 B, bf16) at 1024², each with ComfyUI's dynamic VRAM on and off (``measure.py``: stock merge, native bypass,
our merge, our hot-swap); training steps per second through the bridge vs direct (``train.py`` with
a GPU pod); Wan 2.1 14B at 480p if time is left. Writes ``results.json``, ``results.md`` (the tables
RESULTS.md quotes) and ``log.txt`` under ``--out``; the tables are printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PATH_LABELS = {"stock": "stock merge", "native": "native bypass", "merge": "our merge", "hotswap": "our hot-swap"}


class Check:
    """Runs the phases under one deadline and collects what each reported."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.log_file = open(self.out / "log.txt", "a", buffering=1)
        self.results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run,
                                        "environment": environment(), "phases": {}, "skipped": {}}
        self.work = Path(args.work or tempfile.mkdtemp(prefix="lora-bridge-gpu-"))
        self.size = "tiny" if args.dry_run else "full"
        self.device = "cpu" if args.dry_run else "cuda"

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} {self.left():4.0f}s left] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str, cmd: list[str], needs: float, env: dict[str, str] | None = None) -> str | None:
        """Run one phase if ``needs`` seconds (what it takes at full size; a dry run's phases take seconds)
        are left; its stdout's last ``RESULT`` line (or all of it) is kept."""
        needs = 10 if self.args.dry_run else needs
        if self.left() < needs:
            self.results["skipped"][name] = f"{self.left():.0f} s left, {needs:.0f} s needed"
            self.log(f"{name}: skipped ({self.results['skipped'][name]})")
            return None
        self.log(f"{name}: {' '.join(cmd[1:])}")
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(self.left() - 5, 10),
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            output, code = f"{exc.stdout or ''}{exc.stderr or ''}\n(stopped at the budget)", -1
        elapsed = time.monotonic() - start
        self.log_file.write(output if isinstance(output, str) else output.decode(errors="replace"))
        text = output if isinstance(output, str) else output.decode(errors="replace")
        if code != 0:
            self.results["phases"][name] = {"error": f"exit {code} after {elapsed:.0f} s", "tail": text[-3000:]}
            self.log(f"{name}: FAILED (exit {code}, {elapsed:.0f} s); the end of its output:\n{text[-1500:]}")
            return None
        self.log(f"{name}: done in {elapsed:.0f} s")
        results = [line[7:] for line in text.splitlines() if line.startswith("RESULT ")]
        self.results["phases"][name] = json.loads(results[-1]) if results else {"output": text.strip().splitlines()[-12:]}
        self.results["phases"][name]["seconds"] = round(elapsed, 1)
        return text

    def python(self, script: str, *args: str) -> list[str]:
        return [sys.executable, str(HERE / script), *args]

    def bench(self, name: str, modes: tuple[str, ...], gen_s: float, run_s: float) -> None:
        folder = self.work / name
        if self.phase(f"{name}: generate", self.python("models.py", "--bench", name, "--size", self.size, "--device", self.device,
                                                        "--folder", str(folder), "--ranks", self.args.ranks), gen_s) is None:
            return
        for mode in modes:
            self.phase(f"{name}: dynamic VRAM {mode}", self.python(
                "measure.py", "--bench", name, "--size", self.size, "--device", self.device, "--dynamic-vram", mode,
                "--folder", str(folder), "--ranks", self.args.ranks, "--steps", str(self.args.steps),
                "--jobs", str(self.args.jobs), *(["--resolution", "64"] if self.args.dry_run else [])), run_s)

    def run(self) -> None:
        """The phases named by ``--only``, in this order (a model's files are drawn once per work folder)."""
        only = set(self.args.only.split(","))
        on_off = ("off",) if self.args.dry_run else ("on", "off")
        if "sdxl" in only:
            self.bench("sdxl", on_off, 30, 60)
        if "flux" in only:
            self.bench("flux", on_off[:1], 60, 120)
        if "train" in only:
            self.train()
        if "flux-off" in only and not self.args.dry_run:
            self.bench("flux", ("off",), 60, 120)
        if "wan" in only:
            if not self.args.dry_run:  # 28 GB more: the Flux files (24 GB) go first on a 64 GB disk
                shutil.rmtree(self.work / "flux", ignore_errors=True)
            self.bench("wan", on_off[:1], 60, 150)

    def train(self) -> None:
        comfy_args: list[str] = []
        try:
            import comfyui_frontend_package  # noqa: F401
        except ImportError:  # a headless pod: an empty front end instead of the package (the API is the same)
            front = self.work / "front-end"
            front.mkdir(parents=True, exist_ok=True)
            (front / "index.html").write_text("<!doctype html><title>no front end</title>")
            comfy_args = [f"--comfy-arg=--front-end-root={front}"]  # one token: argparse takes "--…" for an option
        size = ["--checkpoint", "tiny", "--steps", "4", "--resolution", "64"] if self.args.dry_run else \
               ["--checkpoint", "full", "--steps", "30", "--resolution", "512"]
        text = self.phase("training: bridge vs direct", [sys.executable, str(HERE.parent / "train.py"), "--device", self.device,
                                                         *size, *comfy_args], 150)
        if text is not None:
            lines = [line for line in text.splitlines() if re.match(r"(device|steps per second|job wall time|validation)", line)]
            self.results["phases"]["training: bridge vs direct"]["lines"] = lines

    def finish(self) -> str:
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))
        report = render(self.results)
        (self.out / "results.md").write_text(report)
        self.log_file.close()
        return report


def environment() -> dict[str, Any]:
    """The machine, torch, ComfyUI and comfy-aimdo as this run found them."""
    env: dict[str, Any] = {"python": platform.python_version()}
    try:
        env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["gpu"] = "none"
    probe = ("import torch, importlib.metadata as md\n"
             "v = lambda n: md.version(n) if n in {d.metadata['Name'].lower() for d in md.distributions()} else 'missing'\n"
             "print(torch.__version__, torch.version.cuda, v('comfy-aimdo'), v('comfy-kitchen'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split()
    env.update(zip(("torch", "cuda", "comfy_aimdo", "comfy_kitchen"), out))
    comfy = os.environ.get("COMFYUI_DIR")
    if comfy and (Path(comfy) / "comfyui_version.py").exists():
        match = re.search(r'"([^"]+)"', (Path(comfy) / "comfyui_version.py").read_text())
        env["comfyui"] = match.group(1) if match else "unknown"
    return env


def render(results: dict[str, Any]) -> str:
    """The tables RESULTS.md quotes: one per measured model and VRAM setting, then training, then what was cut."""
    env = results["environment"]
    lines = [f"GPU check {results['started']}{' (DRY RUN: CPU, test sizes)' if results['dry_run'] else ''}",
             f"{env.get('gpu')}; torch {env.get('torch')} (CUDA {env.get('cuda')}); ComfyUI {env.get('comfyui', '?')}; "
             f"comfy-aimdo {env.get('comfy_aimdo')}; comfy-kitchen {env.get('comfy_kitchen')}", ""]
    for name, phase in results["phases"].items():
        if "error" in phase:
            lines += [f"{name}: FAILED ({phase['error']})", ""]
            continue
        if "paths" in phase:
            lines += measured(name, phase)
        elif "lines" in phase:
            lines += [f"{name} ({phase['seconds']} s)", *phase["lines"], ""]
        elif name.endswith("generate"):
            lines += [f"{name}: {phase['seconds']} s", ""]
    for name, why in results["skipped"].items():
        lines.append(f"not run: {name} ({why})")
    return "\n".join(lines) + "\n"


def measured(name: str, phase: dict[str, Any]) -> list[str]:
    labels = list(phase["paths"])
    frames = f", {phase['frames']} frames" if phase["frames"] else ""
    low, high = phase["ranks"]
    out = [f"{name}: {phase['size']} model, {phase['width']}x{phase['height']}{frames}, {phase['steps']} steps, "
           f"3 rank-{high} LoRAs alternating; dynamic VRAM {phase['dynamic_vram']}; model load {phase['load_s']} s",
           f"{'':34}" + "".join(f"{PATH_LABELS[label]:>15}" for label in labels)]
    rows = [("per-switch ms (alternate - repeat)", "switch_ms"), ("apply + load ms", "apply_ms"),
            ("jobs per minute, alternating", "jobs_per_min"), ("per-step ms, paths in turn", "step_ms"),
            ("peak torch allocated GiB", "peak_allocated_gib"), ("peak device used GiB", "peak_device_used_gib")]
    for title, key in rows:
        out.append(f"{title[:34]:34}" + "".join(f"{phase['paths'][label].get(key, '-'):>15}" for label in labels))
    if {"step_ms"} <= set(phase["paths"].get("hotswap", {})) & set(phase["paths"].get("merge", {})):
        hot, merged = phase["paths"]["hotswap"]["step_ms"], phase["paths"]["merge"]["step_ms"]
        out.append(f"hot-swap per-step over our merge, rank {high}: {(hot / merged - 1) * 100:+.1f} %")
    low_rank = phase.get(f"rank{low}", {})
    if {"hotswap", "merge"} <= set(low_rank):
        hot, merged = low_rank["hotswap"]["step_ms"], low_rank["merge"]["step_ms"]
        out.append(f"hot-swap per-step over our merge, rank {low}: {(hot / merged - 1) * 100:+.1f} % ({merged} / {hot} ms)")
    for case, by_label in phase.get("deviation", {}).items():
        out.append(f"deviation from stock, {case}: " + ", ".join(
            f"{PATH_LABELS[label]} {value if isinstance(value, str) else f'{value * 100:.2f} %'}" for label, value in by_label.items()))
    for what, error in phase.get("errors", {}).items():
        out.append(f"FAILED {what}: {error}")
    return out + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=420, help="seconds for everything; phases that do not fit are cut")
    parser.add_argument("--only", default="sdxl,flux,train,flux-off,wan",
                        help="phases: sdxl (dynamic VRAM on and off), flux (on), train, flux-off, wan (on)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, test sizes, one VRAM setting: checks that the script runs")
    parser.add_argument("--work", help="where models are written (default: a new temporary folder)")
    parser.add_argument("--ranks", default="16,64")
    parser.add_argument("--steps", type=int, default=0, help="sampling steps per job (0: 4, a dry run 1)")
    parser.add_argument("--jobs", type=int, default=0, help="alternating and repeating jobs per path (0: 2, a dry run 1)")
    args = parser.parse_args()
    args.steps = args.steps or (1 if args.dry_run else 4)
    args.jobs = args.jobs or (1 if args.dry_run else 2)
    check = Check(args)
    try:
        check.run()
    finally:
        print(check.finish(), flush=True)
    if any("error" in phase or phase.get("errors") for phase in check.results["phases"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
