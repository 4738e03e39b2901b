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


NODE_CLASS_MAPPINGS = {"TestForeignModelWrapper": ForeignModelWrapper, "TestTextConditioning": TextConditioning}
