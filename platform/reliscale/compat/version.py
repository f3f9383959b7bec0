"""The version check every seam module runs at import.

A seam module reaches into a library's private internals, which change without notice between
releases: it works for the one version it was written for (the pin in pyproject.toml). Another
version fails at once with one line that says what to do, instead of later with an obscure
AttributeError or ImportError deep inside a trial. RELISCALE_SKIP_VERSION_CHECK=1, set where
the processes start (the driver, and the cluster's nodes for the trial actors and workers),
skips the check to try another version.
"""

from __future__ import annotations

import os
from importlib import metadata

SKIP_ENV = "RELISCALE_SKIP_VERSION_CHECK"


class IncompatibleVersion(RuntimeError):
    """An installed library is not the version whose internals a seam module was written for."""


def mismatch(library: str, installed: str, supported: str, seam: str) -> str | None:
    """The one-line error for `installed` when `seam` was written for `supported`, or None."""
    if installed == supported:
        return None
    return (f"{library} {installed} is installed, but {seam} uses {library}'s private internals as of "
            f"{library} {supported}: pin {library}=={supported} or update {seam} "
            f"({SKIP_ENV}=1 skips this check)")


def require(library: str, supported: str, seam: str) -> None:
    """Raise IncompatibleVersion unless `library` is installed at exactly `supported`."""
    problem = mismatch(library, metadata.version(library), supported, seam)
    if problem and os.environ.get(SKIP_ENV) != "1":
        raise IncompatibleVersion(problem)
