"""Workflow templates: jinja2 files in ``workflows/`` that render API-format graphs.

Templates are looked up in ``LORA_BRIDGE_TEMPLATES_DIR`` first (a team's own, or its versions of
the shipped ones under the same names), then in the shipped ``workflows/``. Each template starts with a ``{#- params {...} -#}`` block declaring its parameters (type,
default, range, choices). Values are validated, then every ``{{ expression }}`` is emitted as
JSON (the environment's ``finalize``), so a prompt holding quotes, braces or
``"}, "99": {…`` stays one JSON string and can never add nodes or break the document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from ..errors import LoraBridgeError
from ..settings import settings

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
_PARAMS_BLOCK = re.compile(r"\{#-?\s*params\s*(\{.*?\})\s*-?#\}", re.S)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class TemplateError(LoraBridgeError):
    """Unknown template, unknown parameter, or a value of the wrong type or out of range."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    multiple_of: int | None = None

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ``TemplateError``."""
        try:
            if self.type == "integer":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif self.type == "number":
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            elif self.type == "boolean":
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError
                    value = value.lower() in ("true", "1")
                elif not isinstance(value, bool):
                    raise ValueError
            elif not isinstance(value, str):
                raise ValueError
        except (TypeError, ValueError):
            raise TemplateError(f"parameter '{self.name}' must be of type {self.type}, got {value!r}") from None
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise TemplateError(f"parameter '{self.name}' = {value} is outside [{self.min}, {self.max}]")
        if self.multiple_of and value % self.multiple_of:
            raise TemplateError(f"parameter '{self.name}' = {value} must be a multiple of {self.multiple_of}")
        if self.choices is not None and value not in self.choices:
            raise TemplateError(f"parameter '{self.name}' = {value!r} is not one of {list(self.choices)}")
        return value


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    family: str
    params: dict[str, Param]
    source: str
    variant: str | None = None  # the model size a LoRA cannot cross, where the template fixes it (Wan 2.2 A14B: "14B")
    experts: dict[str, str] | None = None  # two-expert models (Wan 2.2 A14B): expert -> its loader's node id
    kind: str = "generation"  # or "training": a graph that trains a LoRA (``POST /v1/trainings``)

    def render(self, **values: Any) -> dict[str, Any]:
        """Render the API-format graph with ``values`` (validated; defaults fill the rest)."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise TemplateError(f"template '{self.name}' has no parameter(s) {unknown}; known: {sorted(self.params)}")
        context = {name: p.coerce(values[name]) if name in values else p.default for name, p in self.params.items()}
        text = _compiled(self.source).render(context)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:  # a broken template file, never user input
            raise TemplateError(f"template '{self.name}' rendered invalid JSON: {exc}") from exc


_ENV = jinja2.Environment(finalize=lambda v: json.dumps(v), undefined=jinja2.StrictUndefined, autoescape=False)


@lru_cache(maxsize=128)
def _compiled(source: str) -> jinja2.Template:
    """A template's source compiled once (compiling costs more than rendering, ~5 ms a template)."""
    return _ENV.from_string(source)


@lru_cache(maxsize=None)
def load_template(name: str) -> Template:
    """Load ``workflows/<name>.json.j2``; ``name`` must be a plain template name."""
    if not _NAME.match(name) or ".." in name:
        raise TemplateError(f"invalid template name {name!r}")
    path = next((p for d in _template_dirs() if (p := d / f"{name}.json.j2").is_file()), None)
    if path is None:
        raise TemplateError(f"unknown template '{name}'; available: {list_templates()}")
    source = path.read_text()
    match = _PARAMS_BLOCK.search(source)
    header = json.loads(match.group(1)) if match else {"params": {}}
    params = {
        key: Param(key, spec["type"], spec.get("default"), spec.get("min"), spec.get("max"),
                   tuple(spec["choices"]) if "choices" in spec else None, spec.get("multiple_of"))
        for key, spec in header.get("params", {}).items()
    }
    return Template(name, header.get("description", ""), header.get("family", "unknown"), params, source, header.get("variant"),
                    header.get("experts"), header.get("kind", "generation"))


def _template_dirs() -> list[Path]:
    own = settings().templates_dir
    return [own, WORKFLOWS_DIR] if own is not None else [WORKFLOWS_DIR]


def list_templates() -> list[str]:
    return sorted({p.name[: -len(".json.j2")] for d in _template_dirs() for p in d.glob("*.json.j2")})
