"""Charts drawn on the server as SVG (no script, no library): a training's loss curve."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossChart:
    """A loss curve scaled into a ``width`` × ``height`` box: the polyline's points and the axis labels."""

    points: str
    width: int
    height: int
    first: float
    last: float
    low: float
    high: float
    steps: int


def loss_chart(losses: list[float], width: int = 560, height: int = 220, pad: int = 36) -> LossChart | None:
    """The chart of ``losses`` (one per step); None without at least one finite value."""
    values = [v for v in losses if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
    if not values:
        return None
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step_x = (width - 2 * pad) / max(1, len(values) - 1)
    points = " ".join(f"{pad + i * step_x:.1f},{height - pad - (v - low) / span * (height - 2 * pad):.1f}"
                      for i, v in enumerate(values))
    return LossChart(points, width, height, values[0], values[-1], low, high, len(values))
