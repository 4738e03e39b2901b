"""Test-only ComfyUI nodes (linked into the test pods' custom_nodes; never part of the shipped pack)."""


class ForeignModelWrapper:
    """Another pack's node that takes ComfyUI's single ``model_function_wrapper`` slot (scales the output)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "testing"

    def apply(self, model, scale):
        wrapped = model.clone()

        def wrapper(apply_model, args):
            return apply_model(args["input"], args["timestep"], **args["c"]) * scale

        wrapped.set_model_unet_function_wrapper(wrapper)
        return (wrapped,)


class TextConditioning:
    """Stands in for a text encoder too large to generate here (T5-XXL, UMT5-XXL, Qwen2.5-VL):
    conditioning of the encoder's width, a deterministic function of the text, so a trigger
    word changes it. The diffusion model, its LoRA patching and the sampler stay ComfyUI's."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"text": ("STRING", {"multiline": True}),
                             "width": ("INT", {"default": 4096, "min": 16, "max": 8192}),
                             "tokens": ("INT", {"default": 16, "min": 1, "max": 512}),
                             "pooled_width": ("INT", {"default": 0, "min": 0, "max": 4096})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, width, tokens, pooled_width):
        import hashlib

        import torch

        generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
        cond = torch.randn((1, tokens, width), generator=generator) * 0.1
        extra = {"pooled_output": torch.randn((1, pooled_width), generator=generator) * 0.1} if pooled_width else {}
        return ([[cond, extra]],)


class LoraPatchProbe:
    """What the LoRA patches on a model (and its text encoder) add, as numbers a test can compare with
    another model's, without patching a weight: per patched weight and per patch, its strengths, the
    slice it covers (``offset``) and three random bilinear forms u·Δ·v of the delta it adds. A plain
    LoRA's delta is ``alpha/rank · up @ down`` (ComfyUI's ``LoRAAdapter``: alpha None counts as rank);
    other patches (LoCon mid, DoRA, ``diff``, LoHa, …) by the same forms on each of their tensors. The
    vectors depend on the weight's name only, so a patch the same on two models probes the same."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": ""})}, "optional": {"clip": ("CLIP",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "probe"
    CATEGORY = "testing"

    def probe(self, model, tag, clip=None):
        import json

        patchers = {"model": model, "clip": clip.patcher if clip is not None else None}
        out = {f"{part}:{key}": [_probe_entry(key, entry) for entry in entries]
               for part, patcher in patchers.items() if patcher is not None for key, entries in patcher.patches.items()}
        return {"ui": {"patches": [json.dumps(out, sort_keys=True)]}}


def _forms(key, a, b):
    """Three bilinear forms u·(a @ b)·v (b None: u·a·v, a flattened to two dimensions), in float64."""
    import hashlib

    import torch

    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    a = a.detach().to("cpu", torch.float64)
    a = a.reshape(1, -1) if a.dim() < 2 else a.flatten(1)
    b = None if b is None else b.detach().to("cpu", torch.float64).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn((a.shape[0], 3), generator=generator, dtype=torch.float64)
    v = torch.randn(((b if b is not None else a).shape[1], 3), generator=generator, dtype=torch.float64)
    left = u.T @ a
    right = v if b is None else b @ v
    return [float((left[i] @ right[:, i]).item()) for i in range(3)]


def _probe_entry(key, entry):
    """One patch of ``key``: (strength_patch, kind, forms, strength_model, offset, function)."""
    import torch

    strength_patch, adapter, strength_model, offset, function = entry
    kind, weights = (adapter.name, adapter.weights) if hasattr(adapter, "weights") else (adapter[0], adapter[1])
    if kind == "lora" and all(w is None for w in weights[3:]):
        up, down, alpha = weights[0], weights[1], weights[2]
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        forms = [scale * f for f in _forms(key, up, down)]
    else:
        forms = [_forms(f"{key}/{i}", w, None) if isinstance(w, torch.Tensor) else repr(w) for i, w in enumerate(weights)]
    return [strength_patch, kind, forms, strength_model, list(offset) if offset else None, getattr(function, "__name__", None)]


NODE_CLASS_MAPPINGS = {"TestForeignModelWrapper": ForeignModelWrapper, "TestTextConditioning": TextConditioning,
                       "TestLoraPatchProbe": LoraPatchProbe}
