"""Importing scalinglaws (every submodule) pulls in no training stack and no plotting/tracking."""

import subprocess
import sys

SUBMODULES = ["scalinglaws", "scalinglaws.laws", "scalinglaws.optim", "scalinglaws.load",
              "scalinglaws.bootstrap", "scalinglaws.validate", "scalinglaws.derived",
              "scalinglaws.correlation", "scalinglaws.summary", "scalinglaws.plots",
              "scalinglaws.report", "scalinglaws.cli", "scalinglaws.diagnostics",
              "scalinglaws.select", "scalinglaws.publish"]
HEAVY = ["ray", "torch", "deepspeed", "transformers"]
LAZY = ["matplotlib", "mlflow"]  # imported inside the functions that use them


def test_import_loads_no_heavy_or_lazy_modules():
    code = (
        "import importlib, sys\n"
        f"for m in {SUBMODULES!r}: importlib.import_module(m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY + LAZY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
