"""`reliscale plan | run | resume | status | fit | patch | data`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from reliscale.data.cli import add_data_parser, run_data_command
from reliscale.spec.schema import SpecError, load_spec


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec key (value parsed as YAML); repeatable")


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=None,
                   help="folder holding study folders (default: $RELISCALE_ROOT or ./studies)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reliscale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="print the grid of a spec: sizes, FLOPs, memory per worker")
    p.add_argument("spec", type=Path)
    _add_set(p)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    p = sub.add_parser("run", help="run a study (continues it if it already exists)")
    p.add_argument("spec", type=Path)
    _add_set(p)
    _add_root(p)
    p.add_argument("--progress-every", type=float, default=15.0, metavar="SECONDS")

    p = sub.add_parser("resume", help="continue an interrupted study from its stored spec")
    p.add_argument("study", help="study name (under --root) or study folder")
    _add_root(p)
    p.add_argument("--progress-every", type=float, default=15.0, metavar="SECONDS")

    p = sub.add_parser("status", help="each trial's state, data seen and latest metrics")
    p.add_argument("study", help="study name (under --root) or study folder")
    _add_root(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("patch", help="PAINT: interpolate a trial's weights with fine-tuned ones and sweep α")
    p.add_argument("--base", required=True, type=Path,
                   help="the base trial's checkpoint: a step_* folder or the trial's folder (newest step)")
    p.add_argument("--finetuned", required=True, action="append", type=Path, metavar="CKPT",
                   help="fine-tuned checkpoint (step_* folder, trial folder or state-dict .pt); "
                        "repeat to average several (parallel patching)")
    p.add_argument("--alphas", default="0:1:0.1", help="start:stop:step (stop included) or a list a,b,c")
    p.add_argument("--eval", dest="tasks", action="append", required=True, metavar="CLASS[+CLASS...]",
                   help="a patching task (icl function classes, equal weights); repeatable. The base "
                        "trial's own mixture is always evaluated as the supported task")
    p.add_argument("--metric", default="mse", help="held-out selection metric, lower is better (default mse)")
    p.add_argument("--study", help="the base trial's study (name under --root, or folder); "
                   "default: the folder above --base holding spec.yaml")
    _add_root(p)
    p.add_argument("--out", type=Path, default=None, help="folder for tradeoff.png and curve.csv "
                   "(default: <study folder>/patches/<base trial>)")
    p.add_argument("--no-log", action="store_true", help="do not log the sweep to the study's MLflow store")

    sub.add_parser("fit", help="fit a scaling law (see `reliscale fit --help`)", add_help=False)
    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit"]:
        from scalinglaws.cli import main as fit_main

        return fit_main(argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_plan(args) -> int:
    from reliscale.driver.plan import as_dicts, format_table, plan

    rows, warnings = plan(load_spec(args.spec, args.overrides))
    print(json.dumps(as_dicts(rows), indent=1) if args.json else format_table(rows))
    for w in warnings:
        print(w, file=sys.stderr)
    return 0


def _finish_run(results) -> int:
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"trial {r.config['trial_id']} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_run(args) -> int:
    from reliscale.driver.paths import default_root
    from reliscale.driver.study import run_study

    spec = load_spec(args.spec, args.overrides)
    return _finish_run(run_study(spec, args.root or default_root(), args.progress_every))


def cmd_resume(args) -> int:
    from reliscale.driver.paths import default_root, load_study_spec, study_root
    from reliscale.driver.study import run_study

    root = study_root(args.study, args.root or default_root())
    return _finish_run(run_study(load_study_spec(args.study, root), root, args.progress_every))


def cmd_status(args) -> int:
    from reliscale.driver.paths import default_root, load_study_spec, study_root
    from reliscale.driver.status import format_status, study_status

    root = study_root(args.study, args.root or default_root())
    rows = study_status(load_study_spec(args.study, root), root)
    print(json.dumps(rows, indent=1) if args.json else format_status(rows))
    return 0


def cmd_patch(args) -> int:
    from reliscale.patch.cli import run_patch_command

    return run_patch_command(args)


COMMANDS = {"plan": cmd_plan, "run": cmd_run, "resume": cmd_resume, "status": cmd_status, "patch": cmd_patch,
            "data": run_data_command}

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
