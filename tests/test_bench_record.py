"""A benchmark's run goes on top of its bench/*.md file; the runs before it and the analyses
written under them stay (the README's Measured section cites them by date)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))  # where the bench scripts find it
from record import cpu_model, machine, write_run


def test_a_new_run_goes_on_top_and_every_earlier_run_and_analysis_stays(tmp_path):
    out = tmp_path / "step.md"
    write_run(out, "# Step time\n\n- command: first\n\n| a |\n")
    out.write_text(out.read_text() + "\nWhy the first run is slow: an analysis.\n\n## An older note\n\nkept\n")
    write_run(out, "# Step time\n\n- command: second\n\n| b |\n")

    text = out.read_text()
    assert text.startswith("# Step time\n\n## Run of ") and text.count("# Step time") == 1
    order = ["command: second", "| b |", "command: first", "| a |", "an analysis.", "## An older note", "kept"]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    assert text.count("## Run of ") == 2


def test_the_machine_line_names_the_cpu_model():
    assert cpu_model() and cpu_model() in machine()
    assert machine().split(",")[0].endswith(" cores")
