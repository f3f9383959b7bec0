"""Tasks by name. A task module registers its kind at import; `reliscale.tasks` imports them all."""

from __future__ import annotations

from reliscale.tasks.base import TaskKind

TASKS: dict[str, TaskKind] = {}


def register(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: one instance of the kind under its name."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls()
    return cls
