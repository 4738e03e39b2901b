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


NODE_CLASS_MAPPINGS = {"TestForeignModelWrapper": ForeignModelWrapper}
