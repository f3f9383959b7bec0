"""`reliscale patch`: one PAINT sweep between checkpoints of a study, run in this process.

Everything is checked before any weight is loaded: the checkpoints exist, the base belongs
to a study whose spec is stored with it, the α grid, the tasks and the metric.
"""

from __future__ import annotations

import time
from pathlib import Path

from reliscale.patch.alphas import parse_alphas
from reliscale.patch.interpolate import REPORTED
from reliscale.spec.schema import SpecError, StudySpec, TrialConfig, expand, mixture_name
from reliscale.tasks.icl import ICL_CLASSES
from reliscale.worker.checkpoints import final_checkpoint


def _trial_folder(ckpt: Path) -> Path:
    return ckpt.parent if ckpt.name.startswith("step_") else ckpt


def _find_study(args, problems: list[str]) -> tuple[StudySpec, Path] | None:
    from reliscale.driver.paths import SPEC_FILE, default_root, load_study_spec

    root = args.root or default_root()
    if args.study:
        folder = Path(args.study) if Path(args.study, SPEC_FILE).is_file() else root / args.study
    else:
        folder = next((d for d in Path(args.base).resolve().parents if (d / SPEC_FILE).is_file()), None)
        if folder is None:
            problems.append(f"--base: no spec.yaml in any folder above {str(args.base)!r}; allowed: a "
                            "checkpoint inside a study folder, or name the study with --study")
            return None
    try:
        return load_study_spec(str(folder), root), folder
    except SpecError as e:
        problems += [f"--study: {p}" for p in e.problems]
        return None


def _base_trial(spec: StudySpec, trial_id: str) -> TrialConfig | None:
    """The grid trial with this id, or the one a fine-tune id starts with (same architecture)."""
    grid = sorted(expand(spec), key=lambda t: -len(t.trial_id))
    return next((t for t in grid if trial_id == t.trial_id or trial_id.startswith(t.trial_id + "_")), None)


def _tasks(given: list[str], problems: list[str]) -> list[dict[str, float]]:
    out = []
    for i, text in enumerate(given):
        names = [n.strip() for n in text.split("+")]
        bad = [n for n in names if n not in ICL_CLASSES]
        if bad:
            problems.append(f"--eval[{i}]: {bad[0]!r} is not an icl function class; allowed: "
                            f"{', '.join(ICL_CLASSES)}, joined by '+' for a mixture")
        out.append({n: 1.0 for n in names})
    return out


def check_args(args) -> tuple[TrialConfig, list[dict[str, float]], tuple[float, ...], Path, StudySpec]:
    """Every problem of the command line at once, as a SpecError; else what the sweep needs."""
    problems: list[str] = []
    for flag, path in [("--base", args.base)] + [("--finetuned", p) for p in args.finetuned]:
        if not path.exists():
            problems.append(f"{flag}: {str(path)!r} does not exist; allowed: a step_* checkpoint folder, "
                            "a trial folder or a state-dict .pt file")
        elif path.is_dir():
            try:
                final_checkpoint(_trial_folder(path))
            except FileNotFoundError as e:
                problems.append(f"{flag}: {e}; allowed: a trial checkpoint folder")
    if args.base.is_file():
        problems.append(f"--base: {str(args.base)!r} is a file; allowed: a trial's checkpoint folder "
                        "(its trial id names the architecture)")
    try:
        alphas = parse_alphas(args.alphas)
    except ValueError as e:
        problems.append(f"--alphas: {e}")
        alphas = ()
    if args.metric not in REPORTED:
        problems.append(f"--metric: {args.metric!r} is not allowed; allowed: {', '.join(REPORTED)}")
    tasks = _tasks(args.tasks, problems)
    found = _find_study(args, problems) if not problems else None
    trial = None
    if found:
        spec, _ = found
        trial_id = _trial_folder(args.base.resolve()).name
        trial = _base_trial(spec, trial_id)
        if trial is None:
            problems.append(f"--base: {trial_id!r} is not a trial of study {spec.name!r}; allowed: "
                            f"{', '.join(t.trial_id for t in expand(spec))}")
        elif any(mixture_name(m) == trial.mixture_name for m in tasks):
            problems.append(f"--eval: {trial.mixture_name!r} is the base trial's own mixture (always "
                            "evaluated as the supported task); allowed: other tasks")
    if problems:
        raise SpecError(problems, "reliscale patch")
    return trial, tasks, alphas, found[1], found[0]


def run_patch_command(args) -> int:
    from reliscale import tracking
    from reliscale.driver.paths import StudyPaths
    from reliscale.patch.interpolate import sweep_checkpoints, tradeoff_plot, write_csv
    from reliscale.patch.stage import log_curve, patch_run

    trial, tasks, alphas, folder, spec = check_args(args)
    base = final_checkpoint(_trial_folder(args.base))
    finetuned = [str(p if p.is_file() else final_checkpoint(_trial_folder(p))) for p in args.finetuned]
    mixtures = [dict(trial.mixture), *tasks]
    curve = sweep_checkpoints(trial, str(base), finetuned, mixtures, alphas, args.metric)

    supported = mixture_name(mixtures[0])
    print("alpha  " + "  ".join(f"{t}/{args.metric}" for t in curve.tasks) + "  average  heldout-average")
    held = curve.heldout_average()
    for i, a in enumerate(curve.alphas):
        cells = "  ".join(f"{curve.report[t][args.metric][i]:.4f}" for t in curve.tasks)
        print(f"{a:5.3g}  {cells}  {curve.report_average()[i]:.4f}  {held[i]:.4f}")
    print(f"chosen alpha (lowest held-out average {args.metric}): {curve.chosen:g}")

    out = args.out or folder / "patches" / trial.trial_id
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {tradeoff_plot(out / 'tradeoff.png', curve, supported)} and {write_csv(out / 'curve.csv', curve)}")
    if not args.no_log:
        paths = StudyPaths(spec, folder.parent)
        runs = tracking.StudyRuns(paths.tracking_uri, spec.name, paths.artifacts)
        patch_id = f"{trial.trial_id}_patch_cli_{time.strftime('%Y%m%d-%H%M%S')}"
        params = {"base": str(base), "finetuned": ",".join(finetuned), "mode": "cli", "stage": "1",
                  "alphas": ",".join(f"{a:g}" for a in alphas), "select_metric": args.metric,
                  "tasks": ",".join(curve.tasks), "reported": ",".join(REPORTED)}
        run = patch_run(runs, patch_id, params)
        log_curve(runs.client, run.info.run_id, curve, supported)
        print(f"logged to MLflow run {run.info.run_id} ({paths.tracking_uri})")
    return 0
