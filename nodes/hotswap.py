"""Hot-swap LoRAs: applied at run time as a low-rank addition, base weights never touched.

``y = W·x + Σ s·(alpha/rank)·up(down(x))`` (and the conv equivalent). Each targeted module
gets, once, a forward wrapper that is an exact pass-through unless a LoRA set is active.
The active set travels with the model clone, not with its weights: for the diffusion model
in an ``APPLY_MODEL`` wrapper (ComfyUI's stackable wrappers), for the text encoder in
``model_options["lora_bridge_hotswap"]`` read around ``CLIP.encode_from_tokens``. So changing
the LoRA, adding one or changing its strength makes a new clone whose weights equal the
old one's, and ComfyUI neither re-patches weights nor reloads the model. What runs per module
is made once per active set: on a Linear, all its LoRAs as one down projection and in-place up
projections (``LinearStack``); on a Conv2d, its LoRAs fused into one term.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable

from ..bridge.errors import LoraBridgeError

# id(module) -> terms, for the forward call that is running now
ACTIVE: contextvars.ContextVar["TermSet | None"] = contextvars.ContextVar("lora_bridge_active", default=None)
CLIP_OPTION = "lora_bridge_hotswap"


@dataclass(eq=False)
class Term:
    """One LoRA on one module: its factors as the file has them, and how it is applied."""

    down: Any
    up: Any
    scale: float
    conv: dict[str, Any] | None  # stride/padding/dilation/groups of a Conv2d target, None for Linear
    rows: tuple[int, int, int] | None = None  # (first, count, width): a slice of a fused layer's outputs
    _cast: dict[tuple[Any, Any], tuple[Any, Any]] = field(default_factory=dict)

    def add_to(self, y: Any, x: Any) -> Any:
        """``y`` (a Conv2d's output for ``x``) plus this term; a Linear's terms run as a ``LinearStack``."""
        import torch.nn.functional as F

        key = (x.device, x.dtype)
        if key not in self._cast:
            self._cast[key] = (self.down.to(device=x.device, dtype=x.dtype), self.up.to(device=x.device, dtype=x.dtype))
        down, up = self._cast[key]
        assert self.conv is not None, "a Linear's terms run as a LinearStack"
        out = F.conv2d(F.conv2d(x, down, **self.conv), up)
        return y + (out * self.scale if self.scale != 1.0 else out)


def fuse_conv(terms: list[Term]) -> Term:
    """One term for several LoRAs on one Conv2d: downs stacked, ups side by side with each one's
    scale folded in, so ``up·(down·x)`` is one pair of convolutions however many are active."""
    import torch

    return Term(torch.cat([t.down.float() for t in terms]), torch.cat([t.up.float() * t.scale for t in terms], dim=1),
                1.0, terms[0].conv)


class LinearStack:
    """Every active LoRA on one Linear, added as one down projection (all LoRAs' downs stacked) and one
    up projection per output slice (the whole weight, or a fused layer's q/k/v rows), each accumulated
    into the module's output in place (``addmm_``): no temporary the size of the output, no padding,
    scales folded into the ups. Factors are stacked once per device and dtype, on that device."""

    def __init__(self, terms: list[Term]) -> None:
        self.terms = terms
        self._on: dict[tuple[Any, Any, Any], tuple[Any, list[tuple[int, int, tuple[int, int] | None, Any]]]] = {}

    def _stacked(self, x: Any, y: Any) -> tuple[Any, list[tuple[int, int, tuple[int, int] | None, Any]]]:
        import torch

        key = (x.device, x.dtype, y.dtype)
        if key not in self._on:
            groups: dict[tuple[int, int] | None, list[Term]] = {}
            for term in self.terms:
                groups.setdefault(term.rows[:2] if term.rows else None, []).append(term)
            ordered = [t for members in groups.values() for t in members]
            down = torch.cat([t.down.to(x.device, torch.float32) for t in ordered]).to(x.dtype)
            parts, col = [], 0
            for rows, members in groups.items():
                up = torch.cat([t.up.to(x.device, torch.float32) * t.scale for t in members], dim=1).to(y.dtype)
                parts.append((col, col + up.shape[1], rows, up.t()))
                col += up.shape[1]
            self._on[key] = (down, parts)
        return self._on[key]

    def add_to(self, y: Any, x: Any) -> Any:
        import torch

        down, parts = self._stacked(x, y)
        if torch.is_grad_enabled() or not y.is_contiguous():  # never write into a tensor autograd may need
            y = y.clone(memory_format=torch.contiguous_format)
        hidden = torch.nn.functional.linear(x, down).reshape(-1, down.shape[0]).to(y.dtype)
        out = y.view(-1, y.shape[-1])
        for start, end, rows, up_t in parts:
            target = out if rows is None else out[:, rows[0]:rows[0] + rows[1]]
            target.addmm_(hidden[:, start:end], up_t)
        return y


class TermSet:
    """The active low-rank terms by module (``id(module) -> [Term, …]``). Deliberately not a dict:
    ComfyUI copies model options on every clone (``copy.deepcopy`` in 0.3.x, ``deepcopy_list_dict``
    in 0.33, which rebuilds dict subclasses as plain dicts); this object passes through both as
    itself, so the terms of a model clone stay shared and cost nothing to copy."""

    def __init__(self, by_module: dict[int, list[Term]] | None = None) -> None:
        self._by_module: dict[int, list[Term]] = by_module or {}
        self._fused: dict[int, tuple[Term | LinearStack]] = {}  # what runs, made on first use

    def __deepcopy__(self, memo: dict[int, Any]) -> "TermSet":
        return self

    def __bool__(self) -> bool:
        return bool(self._by_module)

    def get(self, key: int) -> tuple[Term | LinearStack, ...] | list[Term]:
        """The module's terms as they run: one ``LinearStack`` for a Linear, the conv terms fused into one."""
        terms = self._by_module.get(key, [])
        if not terms or (len(terms) == 1 and terms[0].conv is not None):
            return terms
        if key not in self._fused:
            self._fused[key] = (fuse_conv(terms) if terms[0].conv is not None else LinearStack(terms),)
        return self._fused[key]

    def add(self, key: int, term: Term) -> None:
        self._by_module.setdefault(key, []).append(term)
        self._fused.pop(key, None)

    def merged(self, other: "TermSet") -> "TermSet":
        """A new set with ``other``'s terms after this one's."""
        out = {k: list(v) for k, v in self._by_module.items()}
        for k, v in other._by_module.items():
            out.setdefault(k, []).extend(v)
        return TermSet(out)


def _wrap(module: Any) -> None:
    """Install the pass-through forward wrapper on ``module`` (once)."""
    if getattr(module.forward, "_lora_bridge", False):
        return
    original = module.forward
    key = id(module)

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        y = original(x, *args, **kwargs)
        active = ACTIVE.get()
        if active:
            for term in active.get(key):
                y = term.add_to(y, x)
        return y

    forward._lora_bridge = True  # type: ignore[attr-defined]
    module.forward = forward


def supported(key: Any, patch: Any) -> bool:
    """Plain LoRA factors (no LoHa/LoKr, tucker mid, DoRA or reshape) can be hot-swapped, on a whole
    weight or on a row slice of one (``(name, (0, first, count))``, a fused layer's part)."""
    w: Any = getattr(patch, "weights", None)
    plain = getattr(patch, "name", "") == "lora" and bool(w) and w[3] is None and w[4] is None and w[5] is None
    return plain and (isinstance(key, str) or (len(key) == 2 and key[1][0] == 0))


def build_terms(root: Any, patches: dict[Any, Any], strength: float) -> TermSet:
    """Terms for the modules of ``root`` (a torch module) that ``patches`` target."""
    import torch

    terms = TermSet()
    if strength == 0:
        return terms
    for key, patch in patches.items():
        name, rows = (key, None) if isinstance(key, str) else (key[0], key[1])
        if not name.endswith(".weight"):
            continue
        module = root.get_submodule(name[: -len(".weight")])
        up, down, alpha = patch.weights[0], patch.weights[1], patch.weights[2]
        scale = strength * (alpha / down.shape[0] if alpha is not None else 1.0)
        conv = None
        if isinstance(module, torch.nn.Conv2d):
            conv = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation, "groups": module.groups}
            if up.dim() == 2:
                up = up[:, :, None, None]
            if down.dim() == 2:  # factors trained flattened (ComfyUI's trainer): (rank, in * kh * kw)
                down = down.reshape(down.shape[0], *module.weight.shape[1:])
        elif not isinstance(module, torch.nn.Linear):
            raise ValueError(f"cannot hot-swap onto {type(module).__name__} {key}")
        _wrap(module)
        sliced = (rows[1], rows[2], module.out_features) if rows is not None else None
        terms.add(id(module), Term(down, up, scale, conv, sliced))
    return terms


WRAPPER_KEY = "lora_bridge_hotswap"


def _apply_model_wrapper(terms: TermSet) -> Callable[..., Any]:
    """An ``APPLY_MODEL`` wrapper (``comfy/patcher_extension.py``): stacks with every other wrapper."""
    def wrapper(executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = ACTIVE.set(terms)
        try:
            return executor(*args, **kwargs)
        finally:
            ACTIVE.reset(token)

    wrapper._lora_bridge_terms = terms  # type: ignore[attr-defined]
    return wrapper


def attach_to_model(model: Any, terms: TermSet) -> Any:
    """A clone of ``model`` whose sampling runs with ``terms`` active (added to any earlier ones).

    The terms ride an ``APPLY_MODEL`` wrapper under our own key (ComfyUI's stackable wrappers,
    ``comfy/patcher_extension.py``), so another node's wrappers, or its single-slot
    ``model_function_wrapper``, and ours all act.
    """
    new = model.clone()
    if not hasattr(new, "add_wrapper_with_key"):
        raise LoraBridgeError("hotswap needs a ComfyUI with stackable model wrappers (0.3.10 or newer); use mode 'merge'")
    from comfy.patcher_extension import WrappersMP

    for earlier in new.get_wrappers(WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        terms = earlier._lora_bridge_terms.merged(terms)
    new.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    new.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, _apply_model_wrapper(terms))
    return new


def _ensure_clip_hook() -> None:
    import comfy.sd

    original = comfy.sd.CLIP.encode_from_tokens
    if getattr(original, "_lora_bridge", False):
        return

    def encode_from_tokens(self: Any, *args: Any, **kwargs: Any) -> Any:
        terms = self.patcher.model_options.get(CLIP_OPTION)
        if not terms:
            return original(self, *args, **kwargs)
        token = ACTIVE.set(terms)
        try:
            return original(self, *args, **kwargs)
        finally:
            ACTIVE.reset(token)

    encode_from_tokens._lora_bridge = True  # type: ignore[attr-defined]
    comfy.sd.CLIP.encode_from_tokens = encode_from_tokens


def attach_to_clip(clip: Any, terms: TermSet) -> Any:
    """A clone of ``clip`` whose encoding runs with ``terms`` active (added to any earlier ones)."""
    _ensure_clip_hook()
    new = clip.clone()
    existing = new.patcher.model_options.get(CLIP_OPTION)
    new.patcher.model_options[CLIP_OPTION] = existing.merged(terms) if existing else terms
    return new
