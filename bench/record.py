"""Where a benchmark run goes in its bench/*.md file."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def write_run(path: str | Path, run: str) -> None:
    """Put `run` (the file's title line, then the run) at the top of the file under a "## Run of
    <date>" heading: the earlier runs, and the analyses written by hand under them, stay below."""
    out = Path(path)
    title, _, body = run.partition("\n")
    earlier = out.read_text().partition("\n")[2].strip("\n") if out.exists() else ""
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    out.write_text(f"{title}\n\n## Run of {stamp}\n\n{body.strip()}\n" + (f"\n{earlier}\n" if earlier else ""))


def cpu_model() -> str:
    """The CPU's model name, or the architecture where the OS does not say."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def machine() -> str:
    """Cores, architecture and CPU model of the machine a run measured: sessions get different
    machines, and the same tree has run its tests in 24 to 46 minutes on different ones (bench/suite.md)."""
    return f"{os.cpu_count()} cores, {platform.machine()}, {cpu_model()}"
