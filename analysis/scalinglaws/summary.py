"""A fitted law as plain JSON-able data (the CLI's --json and the report's laws.json)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from scalinglaws.bootstrap import BootstrapResult
from scalinglaws.laws import Law
from scalinglaws.validate import Holdout


def law_summary(
    law: Law, boot: BootstrapResult | None = None, holdout: Holdout | None = None, level: float = 0.95
) -> dict[str, Any]:
    """{"form", "x", "y", "params", "ci", "n_points", "loss", "diagnostics"} (+ "holdout"); ci maps
    param -> [lo, hi] at `level` and is empty without a bootstrap; diagnostics are the law's
    `diagnostics_` as [{"code", "message"}] (see diagnostics.py)."""
    ci = {k: [lo, hi] for k, (lo, hi) in boot.params_ci(level).items()} if boot else {}
    out: dict[str, Any] = {
        "form": law.name,
        "x": list(law.x),
        "y": law.y,
        "params": law.params,
        "ci": ci,
        "n_points": law.n_points_,
        "loss": law.loss_,
        "diagnostics": [asdict(d) for d in law.diagnostics_],
    }
    if holdout is not None:
        out["holdout"] = holdout.to_dict()
    return out


def describe(law: Law) -> str:
    """One line: what was fitted to what, and how."""
    how = f"Huber(delta={law.delta:g})" if law.loss == "huber" else "least squares"
    space = "log y" if law.log_space else "y"
    if getattr(law, "increasing", False):
        space = "log(1 - y)"
    return f"{law.name} law of {law.y} on {', '.join(law.x)}: {how} on {space}, {law.n_points_} points"


def json_default(v: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
