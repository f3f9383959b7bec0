"""The α grid of a PAINT sweep, written `start:stop:step` or as a list (light: the spec imports it)."""

from __future__ import annotations

import math
import re

_RANGE = re.compile(r"^\s*([^:]+):([^:]+):([^:]+)$")


def check_alphas(values: list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """Sorted distinct α, each in [0, 1]."""
    bad = [v for v in values if not (isinstance(v, int | float) and 0.0 <= v <= 1.0)]
    if bad or not values:
        shown = bad[0] if bad else list(values)
        raise ValueError(f"{shown!r} is not allowed; allowed: numbers in [0, 1], at least one")
    grid = tuple(sorted({float(v) for v in values}))
    steps = [round(1000 * a) for a in grid]  # α is logged as MLflow step round(1000·α)
    clash = next((a for a, s, prev in zip(grid[1:], steps[1:], steps, strict=False) if s == prev), None)
    if clash is not None:
        raise ValueError(f"{clash!r} is not allowed: it is logged at the same step as its neighbour; "
                         "allowed: α values at least 0.001 apart")
    return grid


def parse_alphas(text: str) -> tuple[float, ...]:
    """'0:1:0.1' (start:stop:step, stop included) or '0,0.5,1' -> sorted distinct α in [0, 1]."""
    m = _RANGE.match(text)
    try:
        if m:
            start, stop, step = (float(v) for v in m.groups())
            if not (step > 0 and stop >= start and math.isfinite(stop - start)):
                raise ValueError
            n = math.floor((stop - start) / step + 1e-9) + 1
            return check_alphas([round(start + i * step, 9) for i in range(n)])
        return check_alphas([float(v) for v in text.split(",") if v.strip()])
    except ValueError as e:
        if "allowed" in str(e):
            raise
        raise ValueError(f"{text!r} is not an α grid; allowed: start:stop:step (step > 0, stop included) "
                         "or a comma-separated list of numbers in [0, 1]") from None
