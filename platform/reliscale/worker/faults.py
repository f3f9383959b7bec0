"""Fault injection for the fault-tolerance tests: kill a worker process at a given step.

RELISCALE_FAULT="kill_worker:study=S:rank=R:step=N:marker=/path" makes rank R of
every trial of study S SIGKILL itself after optimizer step N, once: the marker
file records that it fired, so the restarted worker group trains on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def parse(text: str) -> dict[str, str]:
    kind, *fields = text.split(":")
    return {"kind": kind, **dict(f.split("=", 1) for f in fields)}


def maybe_kill_worker(study: str, trial_id: str, rank: int, step: int) -> None:
    text = os.environ.get("RELISCALE_FAULT")
    if not text:
        return
    fault = parse(text)
    if (fault["kind"] != "kill_worker" or fault.get("study") != study or int(fault["rank"]) != rank
            or int(fault["step"]) != step):
        return
    marker = Path(fault["marker"]) / trial_id
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} after step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)
