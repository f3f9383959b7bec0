"""The repository layout keeps Python's stdlib `platform` module reachable."""

import subprocess
import sys


def test_platform_folder_is_not_a_package(repo):
    assert not (repo / "platform" / "__init__.py").exists()
    assert (repo / "platform" / "reliscale" / "__init__.py").exists()


def test_stdlib_platform_wins_with_repo_root_first_on_path(repo):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import platform; "
        "print(platform.__file__); print(platform.system())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True,
                         check=True, cwd=repo).stdout.splitlines()
    assert not out[0].startswith(str(repo)), out[0]
    assert out[1] == "Linux"


def test_required_top_level_files_exist(repo):
    for name in ("pyproject.toml", "Makefile", "README.md", "cluster.yaml", ".ci/run", "platform",
                 "analysis", "jobs", "tests", "bench"):
        assert (repo / name).exists(), name
    assert "make test" in (repo / ".ci" / "run").read_text()
