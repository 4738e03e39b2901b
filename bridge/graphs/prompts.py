"""Prompt text helpers shared by the bridge and the nodes (torch-free)."""

from __future__ import annotations

import re


def with_trigger_words(text: str, triggers: list[str]) -> str:
    """``"{trigger}, {text}"`` for each trigger not already in the text (as a whole phrase, any case)."""
    missing = [t for t in triggers if t and not re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text, re.IGNORECASE)]
    missing = list(dict.fromkeys(missing))
    if not missing:
        return text
    return ", ".join(missing) + (f", {text}" if text.strip() else "")
