"""Strength sweeps: what a LoRA does, shown as the same prompt and seed at strengths 0, 0.5 and 1.0.

A sweep is ordinary generation jobs on the fleet (labelled ``preview_of``), remembered per LoRA (the
``lora_previews`` table) with a fingerprint of what the images depend on: the file, its family and variant,
its trigger word. When the LoRA changes, its sweep is no longer shown and a new one can be asked for.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, GenerationRefused
from ..graphs.templates import load_template
from ..pack_protocol import describe_validation_error
from .character_paths import KEY_FRAME_TEMPLATES, VIDEO_TEMPLATES
from .database import AsyncDatabase
from .records import LoraRecord
from .requests import GenerationCreate, LoraRef
from .runner import Generations

STRENGTHS = (0.0, 0.5, 1.0)
SEED = 7
# the template a family's sweep renders with: its text-to-image template, Wan's text-to-video
SWEEP_TEMPLATES = {**KEY_FRAME_TEMPLATES, "wan": next(iter(VIDEO_TEMPLATES))}


@dataclass(frozen=True)
class Sweep:
    """A LoRA's sweep: the job rendering each strength, and the template and prompt they share."""

    lora_id: str
    jobs: list[tuple[float, str]]
    template: str
    prompt: str
    created: float


def fingerprint(lora: LoraRecord) -> str:
    """What a sweep's images depend on; a sweep made under another fingerprint is out of date."""
    parts = (lora.sha256, lora.low_noise_sha256, lora.family, lora.variant, lora.trigger_word)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


class PreviewStore:
    """The sweep of each LoRA (the ``lora_previews`` table), shared by every replica."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    async def current(self, lora: LoraRecord) -> Sweep | None:
        """The LoRA's sweep, unless there is none or the LoRA changed since."""
        return await self.db.run(self._read, lora.id, fingerprint(lora))

    async def keep(self, lora: LoraRecord, sweep: Sweep) -> None:
        """Keep ``sweep`` as the LoRA's (replacing an older one)."""
        await self.db.run(self._write, sweep, fingerprint(lora))

    def _read(self, lora_id: str, current: str) -> Sweep | None:
        with self.db.sync.backend.read() as db:
            row = db.execute("SELECT fingerprint, jobs, created FROM lora_previews WHERE lora_id = ?", (lora_id,)).fetchone()
        if row is None or row[0] != current:
            return None
        kept = json.loads(row[1])
        return Sweep(lora_id, [(float(s), str(j)) for s, j in kept["jobs"]], kept["template"], kept["prompt"], row[2])

    def _write(self, sweep: Sweep, print_: str) -> None:
        kept = json.dumps({"jobs": sweep.jobs, "template": sweep.template, "prompt": sweep.prompt})
        with self.db.sync.tx() as db:
            db.execute("INSERT INTO lora_previews (lora_id, fingerprint, jobs, created) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (lora_id) DO UPDATE SET fingerprint = excluded.fingerprint, jobs = excluded.jobs, "
                       "created = excluded.created", (sweep.lora_id, print_, kept, sweep.created))


class StrengthSweeps:
    """Start a LoRA's sweep on the fleet (kept in the ``PreviewStore``)."""

    def __init__(self, gens: Generations, params: dict[str, Any]) -> None:
        self.gens, self.store = gens, PreviewStore(gens.db)
        try:  # LORA_BRIDGE_PREVIEW_PARAMS: a checkpoint, steps, size… for every sweep, checked as a request's are
            self.params = GenerationCreate.model_validate({"template": "any", "params": params}).params
        except ValidationError as exc:
            raise ConfigError(f"LORA_BRIDGE_PREVIEW_PARAMS: {describe_validation_error(exc)}") from None

    async def start(self, lora: LoraRecord) -> Sweep:
        """Queue one job per strength (the same template, prompt and seed); ``GenerationRefused`` says why a
        LoRA cannot be swept (not ready, or a family no shipped template draws)."""
        if lora.status != "ready" or not lora.source:
            raise GenerationRefused(f"LoRA {lora.name!r} is {lora.status}: only a ready LoRA with a file can be previewed")
        template = SWEEP_TEMPLATES.get(lora.family or "")
        if template is None:
            raise GenerationRefused(f"no shipped template draws a {lora.family or 'unknown'}-family preview")
        prompt = f"{lora.trigger_word}, a portrait" if lora.trigger_word else "a portrait"
        declared = load_template(template).params  # the sweep parameters this family's template has
        params = {"prompt": prompt, "seed": SEED, **{k: v for k, v in self.params.items() if k in declared}}
        jobs = []
        for strength in STRENGTHS:
            request = GenerationCreate(template=template, params=params,
                                       loras=[LoraRef(lora_id=lora.id, strength_model=strength)], lora_policy="strict",
                                       labels={"preview_of": lora.id, "strength": f"{strength:g}"})
            jobs.append((strength, await self.gens.start(request)))
        sweep = Sweep(lora.id, jobs, template, prompt, time.time())
        await self.store.keep(lora, sweep)
        return sweep
