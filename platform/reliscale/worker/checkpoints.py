"""A trial's checkpoints: DeepSpeed state under `step_<n>/ds` in the trial's storage folder.

The training loop saves and restores them; PAINT reads the full weights back out of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CKPT_TAG = "ds"  # the DeepSpeed tag every checkpoint is saved under
HEAD_PREFIX = "head."  # a classifier's reliability head (`models.build.Classifier.head`)


@dataclass(frozen=True)
class StartFrom:
    """The weights a fine-tune starts from: a `step_*` checkpoint, a trial folder or a saved state
    dict. With `new_head`, the classifier head keeps its fresh initialisation: the downstream task
    has its own classes, and a head fitted to the pretraining classes would only bias it."""

    path: str
    new_head: bool = False


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def step_checkpoints(trial_dir: Path) -> list[Path]:
    """The `step_*` checkpoints of a trial's storage folder, oldest first."""
    return sorted(p for p in Path(trial_dir).glob("step_*") if p.is_dir())


def final_checkpoint(trial_dir: Path) -> Path:
    """The newest `step_*` checkpoint of a trial's storage folder that holds DeepSpeed state."""
    steps = [p for p in step_checkpoints(trial_dir) if (p / CKPT_TAG).is_dir()]
    if not steps:
        raise FileNotFoundError(f"{trial_dir}: no step_* checkpoint with a {CKPT_TAG!r} folder")
    return steps[-1]


def restore(engine: Any, objective: Any, latest: Path | None) -> int:
    """Load the newest readable checkpoint at or before `latest`; the optimizer steps already done."""
    if latest is None:
        return 0
    # Kept checkpoints sit side by side in the trial's storage folder, newest last.
    candidates = step_checkpoints(latest.parent)[::-1] or [latest]
    for path in candidates:
        try:
            _, client = engine.load_checkpoint(str(path), tag=CKPT_TAG)
            if client is None:
                raise RuntimeError("no DeepSpeed state in it")
        except Exception as e:
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path.name, e)
            continue
        if path != candidates[0]:
            log.warning("resumed from %s instead of the newest checkpoint %s", path.name, candidates[0].name)
        objective.load_state_dict(client["objective"])
        return int(client["step"])
    log.warning("no readable checkpoint; starting from scratch")
    return 0


def save(engine: Any, objective: Any, folder: str, step: int) -> None:
    engine.save_checkpoint(folder, tag=CKPT_TAG, client_state={"step": step, "objective": objective.state_dict()})


def checkpoint_weights(path: str | Path) -> dict:
    """Full fp32 weights of a trial checkpoint (`step_*` folder, any ZeRO stage), a trial folder
    (its newest checkpoint) or a saved state dict.

    ZeRO 1-3 shard the fp32 master weights over ranks: DeepSpeed's zero_to_fp32 consolidates
    them (full shapes under ZeRO-3 too). Stage 0 keeps the whole module in one file.
    """
    import torch

    path = Path(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.is_dir() and not (path / CKPT_TAG).is_dir():
        path = final_checkpoint(path)
    ds = path / CKPT_TAG
    if any(ds.glob("*optim_states.pt")):
        import contextlib
        import io

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        quiet = io.StringIO()  # it prints (and draws a progress bar) per shard
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=CKPT_TAG)
    else:
        state = torch.load(ds / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in state.items()}


def load_start(model: Any, start: StartFrom) -> None:
    """Load `start`'s weights into `model`: all of them, or all but the head (`new_head`). Any
    other mismatch (a key missing or left over, a shape) is an error naming the keys."""
    weights = checkpoint_weights(start.path)
    if start.new_head:
        weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a shape differs
        raise ValueError(f"{start.path}: the weights do not fit the model: {e}") from None
    missing = [k for k in missing if not (start.new_head and k.startswith(HEAD_PREFIX))]
    if missing or unexpected:
        raise ValueError(f"{start.path}: the weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
