"""Where a study lives: its folder under the root, its spec file, store and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from reliscale import tracking
from reliscale.spec.schema import SpecError, StudySpec, validate

SPEC_FILE = "spec.yaml"


def default_root() -> Path:
    return Path(os.environ.get("RELISCALE_ROOT", "studies"))


class StudyPaths:
    """Where a study keeps its spec, tracking store and checkpoints."""

    def __init__(self, spec: StudySpec, root: Path):
        self.dir = (root / spec.name).resolve()
        self.storage = Path(spec.storage.path).resolve() if spec.storage.path else self.dir / "checkpoints"
        self.tracking_uri = spec.tracking.uri or tracking.default_uri(self.dir)
        self.artifacts = self.dir / "mlflow-artifacts"

    @property
    def tune_dir(self) -> Path:
        return self.storage / "tune"

    @property
    def trials_dir(self) -> Path:
        """Every trial's checkpoints: <trials_dir>/<trial_id>/step_*."""
        return self.storage / "trials"


def study_root(study: str, root: Path) -> Path:
    """The root a study lives under: the folder above it when `study` names its folder, else `root`."""
    return Path(study).resolve().parent if Path(study, SPEC_FILE).is_file() else root


def load_study_spec(study: str, root: Path) -> StudySpec:
    """The spec stored with a study, given its folder or its name under `root`."""
    folder = Path(study) if Path(study, SPEC_FILE).is_file() else root / study
    path = folder / SPEC_FILE
    if not path.is_file():
        raise SpecError([f"{study!r}: no study there (looked for {path})"])
    return validate(yaml.safe_load(path.read_text()), str(path))
