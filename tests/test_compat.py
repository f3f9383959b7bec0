"""Third-party internals are reached only through `reliscale.compat`, which refuses, with one line
that says what to do, a library version other than the one it was written for."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reliscale.compat import version
from reliscale.compat.version import IncompatibleVersion, mismatch, require

from conftest import REPO, tiny_icl_spec

PACKAGE = REPO / "platform" / "reliscale"
COMPAT = PACKAGE / "compat"
GUARDED = ("ray", "deepspeed", "transformers", "mlflow", "torch")
# attributes of library objects that are internals although their names look public
POKED = {"enable_backward_allreduce"}
# a library module's dunders that are internals (a module's `__file__` is public: reading a
# private module's is caught at its import)
DUNDERS = {"__compatible_ops__"}
# public API despite the leading underscore
PUBLIC_UNDERSCORE = {"_exit", "_asdict", "_replace", "_fields", "_make"}
GREPPED = re.compile(r"_internal|_local_tuner|__compatible_ops__|_attn_implementation")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def attribute_chain(node: ast.expr) -> list[str]:
    """`a.b(x).c[0].d` -> ["a", "b", "c", "d"]; [] when it does not start at a name."""
    chain = []
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        if isinstance(node, ast.Attribute):
            chain.append(node.attr)
        node = node.func if isinstance(node, ast.Call) else node.value
    return [node.id, *reversed(chain)] if isinstance(node, ast.Name) else []


def root_name(node: ast.expr) -> str | None:
    chain = attribute_chain(node)
    return chain[0] if chain else None


def imported(module: str, name: str | None):
    """The object `from module import name` (or `import module`) binds."""
    if name is None:
        return importlib.import_module(module)
    try:
        return importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module), name)


def defines(library_names: dict[str, tuple[str, str | None]], base: ast.expr, method: str) -> bool:
    """Whether a base class imported from a guarded library has `method` (True when unresolvable)."""
    root, *attrs = attribute_chain(base)
    try:
        obj = imported(*library_names[root])
        for attr in attrs:
            obj = getattr(obj, attr)
    except (ImportError, AttributeError):
        return True
    return hasattr(obj, method)


def private_uses(source: str) -> list[str]:
    """Every use of a library's internals in a module's source, by line: imports of private modules
    or names, pokes at private attributes, and overrides of private methods of a library's class."""
    nodes = list(ast.walk(ast.parse(source)))
    library_names: dict[str, tuple[str, str | None]] = {}  # local name -> what it was imported as
    found = []
    for node in nodes:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        module = node.module if isinstance(node, ast.ImportFrom) else None
        if isinstance(node, ast.ImportFrom) and (node.level or module == "__future__"):
            continue
        for alias in node.names:
            path = f"{module}.{alias.name}" if module else alias.name
            top = path.split(".")[0]
            if top in GUARDED:
                if module:
                    library_names[alias.asname or alias.name] = (module, alias.name)
                else:
                    library_names[alias.asname or top] = (alias.name if alias.asname else top, None)
            if top != "reliscale" and any(is_private(part) for part in path.split(".")):
                found.append((node.lineno, f"import of {path}"))
    for node in nodes:
        if isinstance(node, ast.Attribute):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            private = is_private(node.attr) and node.attr not in PUBLIC_UNDERSCORE and not on_self
            library_dunder = node.attr in DUNDERS and root_name(node.value) in library_names
            if private or library_dunder or node.attr in POKED:
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.ClassDef):
            bases = [b for b in node.bases if root_name(b) in library_names]
            found += [(f.lineno, f"{node.name} overrides {f.name}") for f in node.body
                      if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and is_private(f.name)
                      and any(defines(library_names, b, f.name) for b in bases)]
    return [f"line {line}: {what}" for line, what in sorted(found)]


def platform_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if COMPAT not in p.parents]


def test_no_module_outside_compat_reaches_into_a_librarys_internals():
    found = {str(p.relative_to(REPO)): uses for p in platform_modules() if (uses := private_uses(p.read_text()))}
    assert not found, f"move these into reliscale/compat: {found}"


def test_the_internals_check_finds_every_kind_of_use_in_a_crafted_module():
    bad = '''
import ray.train.v2._internal.execution.controller
from ray.experimental.internal_kv import _internal_kv_get
from torch.distributed import _functional_collectives
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from reliscale.spec.schema import _path


def f(tuner, engine, cfg):
    from ray.train.v2._internal.execution import context
    import deepspeed
    tuner._local_tuner.get_run_config().callbacks = []
    deepspeed.ops.__compatible_ops__["x"] = False
    cfg._attn_implementation = "sdpa"
    engine.enable_backward_allreduce = False
    return context.__file__


class T(DataParallelTrainer):
    def _create_default_callbacks(self):
        return super()._create_default_callbacks()

    def __init__(self):
        self._mine = 1

    def _own_helper(self):
        return self._mine
'''
    found = private_uses(bad)
    assert found == [
        "line 2: import of ray.train.v2._internal.execution.controller",
        "line 3: import of ray.experimental.internal_kv._internal_kv_get",
        "line 4: import of torch.distributed._functional_collectives",
        "line 10: import of ray.train.v2._internal.execution.context",
        "line 12: ._local_tuner",
        "line 13: .__compatible_ops__",
        "line 14: ._attn_implementation",
        "line 15: .enable_backward_allreduce",
        "line 20: T overrides _create_default_callbacks",
        "line 21: ._create_default_callbacks",
    ], found
    # the platform's own private names, a class's own attributes and the public API are fine
    fine = """
import os

import torch
from ray import tune


class View(tune.Callback):
    def _id(self, trial):
        return self._ids[trial]


headers = os.path.dirname(torch.__file__)
os._exit(0)
"""
    assert private_uses(fine) == []


def test_grepping_for_internals_finds_them_only_in_compat():
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in sorted((REPO / "platform").rglob("*"))
            if p.is_file() and COMPAT not in p.parents and p.suffix != ".pyc"
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if GREPPED.search(line)]
    assert not hits, hits


@pytest.mark.parametrize(("library", "seam_module"), [("ray", "ray_train"), ("deepspeed", "deepspeed")])
def test_each_seam_supports_exactly_the_version_pyproject_pins(library, seam_module):
    pin = re.search(rf'"{library}(\[[^\]]*\])?==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, f"pyproject.toml pins no exact {library} version"
    seam = importlib.import_module(f"reliscale.compat.{seam_module}")
    assert pin.group(2) == seam.SUPPORTED


def test_another_version_is_one_line_naming_the_library_both_versions_and_the_fix():
    line = mismatch("ray", "2.61.0", "2.60.0", "reliscale/compat/ray_train.py")
    assert "\n" not in line
    assert line.startswith("ray 2.61.0 is installed")
    assert "ray 2.60.0" in line
    assert "pin ray==2.60.0 or update reliscale/compat/ray_train.py" in line
    assert "RELISCALE_SKIP_VERSION_CHECK=1" in line
    assert mismatch("ray", "2.60.0", "2.60.0", "reliscale/compat/ray_train.py") is None


def test_require_raises_for_another_installed_version_unless_the_check_is_skipped(monkeypatch):
    monkeypatch.delenv(version.SKIP_ENV, raising=False)
    monkeypatch.setattr(version.metadata, "version", {"deepspeed": "0.20.0"}.get)
    with pytest.raises(IncompatibleVersion, match=r"^deepspeed 0\.20\.0 is installed.*pin deepspeed==0\.19\.8 "):
        require("deepspeed", "0.19.8", "reliscale/compat/deepspeed.py")
    require("deepspeed", "0.20.0", "reliscale/compat/deepspeed.py")
    monkeypatch.setenv(version.SKIP_ENV, "1")
    require("deepspeed", "0.19.8", "reliscale/compat/deepspeed.py")


IMPORT_WITH_ANOTHER_VERSION = """
import importlib.metadata, sys
importlib.metadata.version = lambda name: "9.9.9"
try:
    import reliscale.compat.{module}
except Exception as e:
    print(type(e).__name__, e, sep="\\n")
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "deepspeed", "torch")))
"""


@pytest.mark.parametrize(("module", "library", "supported"),
                         [("ray_train", "ray", "2.60.0"), ("deepspeed", "deepspeed", "0.19.8")])
def test_importing_a_seam_with_another_library_version_fails_before_importing_the_library(
        module, library, supported):
    env = {k: v for k, v in os.environ.items() if k != version.SKIP_ENV}
    out = subprocess.run([sys.executable, "-c", IMPORT_WITH_ANOTHER_VERSION.format(module=module)],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == [
        "IncompatibleVersion",
        f"{library} 9.9.9 is installed, but reliscale/compat/{module}.py uses {library}'s private "
        f"internals as of {library} {supported}: pin {library}=={supported} or update "
        f"reliscale/compat/{module}.py (RELISCALE_SKIP_VERSION_CHECK=1 skips this check)",
        "[]",
    ]


def test_report_lines_are_quieted_on_the_logger_ray_train_logs_them_with():
    from ray.train.v2._internal.execution import context

    from reliscale.compat.ray_train import quiet_report_lines

    context.logger.setLevel(logging.NOTSET)
    quiet_report_lines()
    assert context.logger.level == logging.WARNING


def test_a_restored_tuner_runs_the_callbacks_it_is_given():
    from ray import tune

    from reliscale.compat.ray_train import set_restored_callbacks

    old, new = tune.Callback(), tune.Callback()
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(callbacks=[old]))
    set_restored_callbacks(tuner, [new])
    # what the Tuner hands to the Tune controller when it fits
    assert tuner._local_tuner.get_run_config().callbacks == [new]


def test_every_transformers_model_of_every_family_attends_with_sdpa():
    from transformers import PreTrainedModel

    from reliscale.spec.schema import expand, validate
    from reliscale.tasks import build_model

    docs = [tiny_icl_spec()]
    for family in ("decoder", "vit", "encdec"):
        doc = tiny_icl_spec(model={"family": family, "sizes": ["S0"]})
        doc["data"] = {"task": "mnist1d", "sizes": [256], "batch_size": 32}
        docs.append(doc)
    attention = {}
    for doc in docs:
        model = build_model(expand(validate(doc))[0])
        for m in model.modules():
            if isinstance(m, PreTrainedModel):
                attention[f"{doc['model']['family']}/{type(m).__name__}"] = m.config._attn_implementation
    assert len(attention) == 4 and set(attention.values()) == {"sdpa"}, attention
