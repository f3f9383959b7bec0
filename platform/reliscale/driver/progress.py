"""A live view of a running study, printed as plain text blocks.

Plain lines (no cursor tricks) so the same view reads well in a terminal and in
a `ray job logs --follow` stream. Progress is weighted by each trial's planned
FLOPs. The ETA models a trial's wall time as a + b·FLOPs (start-up overhead plus
compute), fitted to the trials finished so far, and divides the remaining work by
the number of trials that run at once.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from ray import tune

from reliscale.driver.search import pruned

STATE = {"TERMINATED": "done", "RUNNING": "running", "PENDING": "pending", "ERROR": "error",
         "PAUSED": "paused"}


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressView(tune.Callback):
    def __init__(self, study: str, flops: dict[str, float], data_sizes: dict[str, int],
                 concurrency: int, interval_s: float = 15.0, pruning: str | None = None):
        self.study, self.flops, self.sizes = study, flops, data_sizes
        self.concurrency, self.interval = concurrency, interval_s
        self.started: dict[str, float] = {}
        self.durations: dict[str, float] = {}
        self.completed: set[str] = set()  # Tune calls on_trial_complete before the trial's status is TERMINATED
        self.diverged: dict[str, str] = {}  # trial -> why, from the trial's last report
        self.pruning = pruning  # the study's scheduler and metric ("asha, eval/id/loss"), if it prunes
        self.pruned: dict[str, str] = {}  # trial -> where the scheduler stopped it
        self.seen: dict[str, int] = {}
        self.latest: dict[str, dict] = {}
        self.t0 = time.monotonic()
        self.last_print = 0.0

    def _id(self, trial) -> str:
        return trial.config["trial_id"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[self._id(trial)] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = self._id(trial)
        self.seen[tid] = int(result.get("data_seen", 0))
        self.latest[tid] = result
        if result.get("diverged"):
            self.diverged[tid] = f"at {self.seen[tid]:,d} / {self.sizes[tid]:,d}: {result['diverged']}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = self._id(trial)
        if self.pruning and pruned(self.latest.get(tid, {})):
            self.pruned[tid] = f"at {self.seen[tid]:,d} / {self.sizes[tid]:,d} ({self.pruning})"
        self.seen[tid] = self.sizes[tid]
        self.completed.add(tid)
        stopped = tid in self.diverged or tid in self.pruned  # its time says nothing of its FLOPs
        if tid in self.started and not stopped:
            self.durations[tid] = time.monotonic() - self.started[tid]
        if tid in self.diverged:
            self._print(trials, f"DIVERGED {tid} {self.diverged[tid]}")
        elif tid in self.pruned:
            self._print(trials, f"PRUNED {tid} {self.pruned[tid]}")
        else:
            self._print(trials, f"finished {tid}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, f"FAILED {self._id(trial)} (see its error.txt in the study's storage)")

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_print >= self.interval:
            self._print(trials)

    def on_experiment_end(self, trials, **info):
        self._print(trials, "study finished")

    def fraction_done(self) -> float:
        total = sum(self.flops.values()) or 1.0
        done = sum(self.flops[t] * min(1.0, self.seen.get(t, 0) / self.sizes[t]) for t in self.flops)
        return done / total

    def eta_s(self) -> float:
        """Seconds left: fitted per-trial time of the unfinished work over the concurrency."""
        if self.completed >= self.flops.keys():
            return 0.0
        done = list(self.durations)
        if not done:
            return float("nan")
        f = np.array([self.flops[t] for t in done])
        y = np.array([self.durations[t] for t in done])
        if len(done) >= 2 and np.ptp(f) > 0:
            b = max(0.0, float(np.polyfit(f, y, 1)[0]))
            a = max(0.0, float(np.mean(y - b * f)))
        else:
            a, b = float(y.mean()), 0.0
        now = time.monotonic()
        left = 0.0
        for t, flops in self.flops.items():
            if t in self.durations or t in self.completed:
                continue
            expected = a + b * flops
            left += max(0.0, expected - (now - self.started[t])) if t in self.started else expected
        return left / self.concurrency

    def _print(self, trials, event: str = "") -> None:
        self.last_print = time.monotonic()
        elapsed = self.last_print - self.t0
        states = {self._id(t): STATE.get(t.status, t.status.lower()) for t in trials}
        states.update(dict.fromkeys(self.completed, "done"))
        counts = {v: 0 for v in STATE.values()}
        for tid in self.flops:  # Tune creates a grid's trials only as slots free up: the rest are pending
            state = states.get(tid, "pending")
            counts[state] = counts.get(state, 0) + 1
        frac = self.fraction_done()
        eta = self.eta_s()
        eta_s = _hms(eta) if eta == eta else "--:--:--"
        head = (f"[reliscale {self.study}] {_hms(elapsed)}  done {counts['done']}/{len(self.flops)}  "
                f"running {counts['running']}  pending {counts['pending']}  errors {counts['error']}  "
                + (f"diverged {len(self.diverged)}  " if self.diverged else "")
                + (f"pruned {len(self.pruned)}  " if self.pruned else "")
                + f"compute {100 * frac:.0f}%  ETA {eta_s}")
        lines = [head + (f"  | {event}" if event else "")]
        for t in trials:
            tid = self._id(t)
            if states[tid] != "running":
                continue
            r = self.latest.get(tid, {})
            loss = r.get("train/loss")
            lines.append(f"    {tid:<40} {self.seen.get(tid, 0):>12,d} / {self.sizes[tid]:,d}"
                         + (f"  train/loss {loss:.4g}" if loss is not None else ""))
        print("\n".join(lines), file=sys.stdout, flush=True)
