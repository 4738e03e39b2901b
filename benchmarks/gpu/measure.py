"""One model under one dynamic-VRAM setting: four ways of applying LoRAs, measured in one ComfyUI process.

    python benchmarks/gpu/measure.py --bench flux --size full --device cuda --dynamic-vram on --folder DIR

Run by ``check.py`` (one process per model and setting, since ComfyUI chooses its model patcher at
start-up); prints one ``RESULT {json}`` line. ComfyUI is imported the way its ``main.py`` sets it
up: the CUDA allocator it picks, and with ``--dynamic-vram on`` comfy-aimdo's ``ModelPatcherDynamic``
(feature-detected; a ComfyUI without it reports the mode it ran in). The paths:

- ``stock``: ComfyUI's ``LoraLoader`` (``LoraLoaderModelOnly`` for diffusion models), merged weights;
- ``native``: ComfyUI's ``LoraLoaderBypass`` (where it exists);
- ``merge`` / ``hotswap``: this pack's Apply LoRA in each mode (LoRAs kept in its memory cache).

For each: jobs alternating three LoRAs (switch + text encoding + sampling + VAE decode where the
model has them), jobs repeating one LoRA (the objects reused, as ComfyUI's cache reuses a node's
output), their difference (what a switch costs, patching deferred to the first step included),
per-step time (the paths taking turns), the peak of torch's allocator and of the device's used memory, and how far each
result lands from stock's (as a share of the LoRA's own effect; two stacked LoRAs too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfyui_lora_bridge.testing.inprocess import import_comfyui  # noqa: E402
from comfyui_lora_bridge.testing.install import comfyui_dir  # noqa: E402
from models import BENCHES, Bench, BenchFiles  # noqa: E402

Apply = Callable[[Any, Any, int, float, float], tuple[Any, Any]]


def start_comfyui(folder: Path, device: str, dynamic_vram: bool) -> str:
    """Import ComfyUI here as ``main.py`` would start it; returns the VRAM mode it is in."""
    has_switch = "--disable-dynamic-vram" in (comfyui_dir() / "comfy" / "cli_args.py").read_text()
    import_comfyui(folder, device, ["--disable-dynamic-vram"] if has_switch and not dynamic_vram and device != "cpu" else [])
    import folder_paths

    for kind in ("checkpoints", "diffusion_models"):
        folder_paths.add_model_folder_path(kind, str(folder), is_default=True)
    if device != "cpu":
        import cuda_malloc  # noqa: F401  (ComfyUI's choice of CUDA allocator, made before torch starts)
    import comfy.cli_args

    wants = dynamic_vram and getattr(comfy.cli_args, "enables_dynamic_vram", lambda: False)()
    if wants:
        import comfy_aimdo.control

        for kwargs in ({"simple_vram_headroom": None, "nvml_pressure": True}, {"simple_vram_headroom": None}, {}):
            try:  # comfy-aimdo's protocols, newest first, as main.py tries them
                comfy_aimdo.control.init(**kwargs)
                break
            except TypeError:
                continue
    import comfy.model_management as mm
    import comfy.model_patcher

    if not wants:  # (a ComfyUI without dynamic VRAM has no comfy.memory_management either)
        return "off" if device != "cpu" else "off (cpu)"
    import comfy.memory_management

    headroom = int(getattr(comfy.cli_args.args, "vram_headroom", 0) * 1024**3)
    try:
        ok = comfy_aimdo.control.init_devices((d.index, headroom) for d in mm.get_all_torch_devices())
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in mm.get_all_torch_devices())
    if not ok:
        return "off (comfy-aimdo did not start)"
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return "on"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", choices=list(BENCHES), required=True)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--dynamic-vram", choices=["on", "off"], default="on")
    parser.add_argument("--folder", type=Path, required=True, help="where check.py wrote the model and LoRAs")
    parser.add_argument("--ranks", default="16,64", help="low,high: the high rank is switched between")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="alternating and repeating jobs per path")
    parser.add_argument("--resolution", type=int, default=0, help="image side (0: the model's own, 1024² / 480p)")
    parser.add_argument("--paths", default="stock,native,merge,hotswap")
    args = parser.parse_args()
    bench = BENCHES[args.bench]
    low, high = (int(r) for r in args.ranks.split(","))
    files = BenchFiles(args.folder / f"{bench.name}-{args.size}.safetensors",
                       {rank: sorted(args.folder.glob(f"{bench.name}-{args.size}-r{rank}-*.safetensors")) for rank in (low, high)})
    result = Measure(bench, files, args, start_comfyui(args.folder, args.device, args.dynamic_vram == "on"), low, high).run()
    print("RESULT " + json.dumps(result), flush=True)


class Measure:
    """The measurements of one process (see the module docstring)."""

    def __init__(self, bench: Bench, files: BenchFiles, args: argparse.Namespace, vram_mode: str, low: int, high: int) -> None:
        import comfy.model_management as mm
        import torch

        import nodes

        self.torch, self.mm, self.nodes = torch, mm, nodes
        self.bench, self.files, self.args, self.vram_mode = bench, files, args, vram_mode
        self.low, self.high = low, high
        self.cuda = args.device == "cuda"
        self.width = args.resolution or bench.width
        self.height = args.resolution or bench.height
        self.report: dict[str, Any] = {"bench": bench.name, "size": args.size, "device": args.device, "dynamic_vram": vram_mode,
                                       "steps": args.steps, "width": self.width, "height": self.height, "frames": bench.frames,
                                       "ranks": [low, high], "paths": {}}

    # -- set-up ---------------------------------------------------------------------------------------

    def load(self) -> None:
        from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file
        from comfyui_lora_bridge.nodes.lora_handle import LoraHandle

        start = time.perf_counter()
        if self.bench.kind == "checkpoint":
            self.model, self.clip, self.vae = self.nodes.CheckpointLoaderSimple().load_checkpoint(self.files.model.name)[:3]
        else:
            self.model = self.nodes.UNETLoader().load_unet(self.files.model.name, "default")[0]
            self.clip = self.vae = None
        self.report["load_s"] = round(time.perf_counter() - start, 2)
        self.names = {rank: [p.name for p in paths] for rank, paths in self.files.loras.items()}
        self.handles = {rank: [LoraHandle(p, p.name, (info := inspect_file(p)).sha256, {**info.to_dict(), "metadata": {}})
                               for p in paths] for rank, paths in self.files.loras.items()}
        self.cond = self._conditioning()

    def appliers(self, rank: int) -> dict[str, Apply]:
        """Each path as ``(model, clip, lora index, strength_model, strength_clip) -> (model, clip)``."""
        from comfyui_lora_bridge.nodes.lora_apply import ApplyLora

        names, handles, ours = self.names[rank], self.handles[rank], ApplyLora
        stock = self.nodes.LoraLoader()
        out: dict[str, Apply] = {"stock": lambda m, c, k, sm, sc: tuple(stock.load_lora(m, c, names[k], sm, sc))}
        try:
            from comfy_extras.nodes_lora_debug import LoraLoaderBypass
        except ImportError:
            LoraLoaderBypass = None
        if LoraLoaderBypass is not None:
            native = LoraLoaderBypass()
            out["native"] = lambda m, c, k, sm, sc: tuple(native.load_lora(m, c, names[k], sm, sc))
        def mode_of(mode: str) -> Apply:
            return lambda m, c, k, sm, sc: ours.run(m, handles[k], sm, sc, "error", c, mode).result

        out["merge"], out["hotswap"] = mode_of("merge"), mode_of("hotswap")
        wanted = self.args.paths.split(",")
        return {label: fn for label, fn in out.items() if label in wanted}

    def _conditioning(self) -> Any:
        """SDXL encodes its prompt per job (its CLIP carries the LoRA); DiTs take random conditioning of their
        text encoder's width (T5-XXL / UMT5-XXL are not generated)."""
        if self.clip is not None:
            return None
        spec = self.bench.spec(self.args.size)
        g = self.torch.Generator().manual_seed(0)
        extra = {"pooled_output": self.torch.randn((1, spec.pooled_width), generator=g) * 0.1} if spec.family == "flux" else {}
        return [[self.torch.randn((1, 256, spec.text_width), generator=g) * 0.1, extra]]

    def _latent(self) -> dict:
        h, w = self.height // 8, self.width // 8
        if self.bench.frames:
            return {"samples": self.torch.zeros((1, 16, (self.bench.frames - 1) // 4 + 1, h, w))}
        return {"samples": self.torch.zeros((1, 4 if self.bench.kind == "checkpoint" else 16, h, w))}

    # -- one job --------------------------------------------------------------------------------------

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def sample(self, m: Any, c: Any, seed: int, steps: int | None = None) -> tuple[Any, float, float]:
        """Encode (SDXL), sample; returns the latent, the encoding time and the sampling time."""
        t0 = time.perf_counter()
        if c is not None:
            pos = self.nodes.CLIPTextEncode().encode(c, "ohwx, a portrait")[0]
            neg = self.nodes.CLIPTextEncode().encode(c, "blurry")[0]
        else:
            pos = neg = self.cond
        self.sync()
        t1 = time.perf_counter()
        cfg = 5.0 if self.bench.kind == "checkpoint" or self.bench.frames else 1.0
        out = self.nodes.common_ksampler(m, seed, steps or self.args.steps, cfg, "euler", "simple", pos, neg, self._latent())[0]["samples"]
        self.sync()
        return out, t1 - t0, time.perf_counter() - t1

    def job(self, apply: Apply, prev: tuple[int, Any, Any] | None, k: int, seed: int) -> tuple[tuple[int, Any, Any], dict[str, float]]:
        """One job with LoRA ``k``: the apply node runs only when the LoRA changed (ComfyUI's cache)."""
        start = time.perf_counter()
        if prev is not None and prev[0] == k:
            m, c = prev[1], prev[2]
        else:
            m, c = apply(self.model, self.clip, k, 1.0, 1.0)
        self.mm.load_models_gpu([m] + ([c.patcher] if c is not None else []))
        self.sync()
        t_apply = time.perf_counter() - start
        latent, t_encode, t_sample = self.sample(m, c, seed)
        if self.vae is not None:
            self.vae.decode(latent)
            self.sync()
        return (k, m, c), {"apply": t_apply, "encode": t_encode, "sample": t_sample, "total": time.perf_counter() - start}

    # -- the measurements -----------------------------------------------------------------------------

    def memory(self) -> tuple[float, float]:
        if not self.cuda:
            return 0.0, 0.0
        free, total = self.torch.cuda.mem_get_info()
        return self.torch.cuda.max_memory_allocated() / 2**30, (total - free) / 2**30

    def path(self, apply: Apply) -> dict[str, Any]:
        """Switch cost, jobs per minute and memory of one path (its jobs run back to back, as a pod serving it)."""
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        peaks = [0.0]
        state, _ = self.job(apply, None, 0, 0)  # warm-up: the first switch, kernels, the memory cache
        alternating: list[dict[str, float]] = []
        repeating: list[dict[str, float]] = []
        for i in range(self.args.jobs):
            state, t = self.job(apply, state, (state[0] + 1) % 3, i)
            alternating.append(t)
            peaks.append(self.memory()[1])
        for i in range(self.args.jobs):
            state, t = self.job(apply, state, state[0], i)
            repeating.append(t)
            peaks.append(self.memory()[1])
        med = {key: statistics.median(t[key] for t in alternating) for key in alternating[0]}
        rep = {key: statistics.median(t[key] for t in repeating) for key in repeating[0]}
        allocated, _ = self.memory()
        return {
            "switch_ms": round((med["total"] - rep["total"]) * 1000, 1),
            "apply_ms": round(med["apply"] * 1000, 1),
            "job_alternating_s": round(med["total"], 3),
            "job_repeating_s": round(rep["total"], 3),
            "jobs_per_min": round(60 / med["total"], 2),
            "first_step_extra_ms": round((med["sample"] - rep["sample"]) * 1000, 1),
            "peak_allocated_gib": round(allocated, 2),
            "peak_device_used_gib": round(max(peaks), 2),
        }

    def step_times(self, appliers: dict[str, Apply]) -> dict[str, float]:
        """Per-step ms of each path with its LoRA applied once, the paths taking turns (drift, clocks and
        caches hit all alike); the model is loaded before each timed sampling, which alone is timed."""
        applied = {label: apply(self.model, self.clip, 0, 1.0, 1.0) for label, apply in appliers.items()}
        times: dict[str, list[float]] = {label: [] for label in applied}
        for i in range(self.args.jobs + 1):
            for label, (m, c) in applied.items():
                self.mm.load_models_gpu([m] + ([c.patcher] if c is not None else []))
                self.sync()
                t = self.sample(m, c, i)[2] / self.args.steps
                if i:  # the first round warms up (and pays the deferred patching of dynamic VRAM)
                    times[label].append(t)
        return {label: round(statistics.median(t) * 1000, 2) for label, t in times.items()}

    def deviation(self, appliers: dict[str, Apply]) -> dict[str, dict[str, float | str]]:
        """How far each path's result lands from stock's, as a share of the LoRAs' effect (0 = stock)."""
        def stacked(label: str, spec: list[tuple[int, float, float]]) -> tuple[Any, Any]:
            m, c = self.model, self.clip
            for k, sm, sc in spec:
                m, c = appliers[label](m, c, k, sm, sc)
            return m, c

        def run(mc: tuple[Any, Any]) -> Any:
            self.mm.load_models_gpu([mc[0]] + ([mc[1].patcher] if mc[1] is not None else []))
            return self.sample(mc[0], mc[1], 5, 2)[0].float()

        base = run((self.model, self.clip))
        cases = {"one LoRA at 1.0": [(0, 1.0, 1.0)], "two stacked (0.7 then 0.5)": [(0, 0.7, 0.7), (1, 0.5, 0.5)]}
        out: dict[str, dict[str, float | str]] = {}
        for case, spec in cases.items():
            ref = run(stacked("stock", spec))
            effect = (ref - base).abs().max()
            out[case] = {}
            for label in appliers:
                if label == "stock":
                    continue
                diff = (run(stacked(label, spec)) - ref).abs().max() / effect
                out[case][label] = round(float(diff), 5) if self.torch.isfinite(diff) else "non-finite"
        return out

    def run(self) -> dict[str, Any]:
        self.load()
        appliers = self.appliers(self.high)
        for label, apply in list(appliers.items()):  # a path that fails is reported and left out of what follows
            try:
                self.report["paths"][label] = self.path(apply)
            except Exception as exc:  # noqa: BLE001  (the other paths' figures are still wanted)
                self.report.setdefault("errors", {})[label] = self.failed(exc)
                del appliers[label]
            self.mm.soft_empty_cache()
        for rank, labels in ((self.high, list(appliers)), (self.low, ["merge", "hotswap"])):
            try:
                chosen = {label: fn for label, fn in self.appliers(rank).items() if label in labels and label in appliers}
                steps = self.step_times(chosen)
                for label, ms in steps.items():
                    if rank == self.high:
                        self.report["paths"][label]["step_ms"] = ms
                    else:
                        self.report.setdefault(f"rank{rank}", {})[label] = {"step_ms": ms}
            except Exception as exc:  # noqa: BLE001
                self.report.setdefault("errors", {})[f"per-step, rank {rank}"] = self.failed(exc)
        try:
            if "stock" in appliers:
                self.report["deviation"] = self.deviation(appliers)
        except Exception as exc:  # noqa: BLE001
            self.report.setdefault("errors", {})["deviation"] = self.failed(exc)
        return self.report

    def failed(self, exc: BaseException) -> str:
        import traceback

        traceback.print_exc()
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()
        return f"{type(exc).__name__}: {exc}"[:500]


if __name__ == "__main__":
    main()
