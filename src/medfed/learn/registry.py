"""Find installed tasks: entry points of group ``medfed.tasks`` (no code travels with a job)."""

from __future__ import annotations

from importlib.metadata import entry_points

from medfed.core.errors import RegistryError
from medfed.learn.base import Task

GROUP = "medfed.tasks"


def task_names() -> tuple[str, ...]:
    """Names of the tasks installed in this environment, sorted."""
    return tuple(sorted({ep.name for ep in entry_points(group=GROUP)}))


def load_task(name: str) -> Task:
    """Instantiate the installed task ``name``.

    Raises
    ------
    RegistryError
        No entry point of that name (the message lists the installed ones), or it does not load.
    """
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise RegistryError(f"unknown task {name!r}, installed: {list(task_names())}")
    try:
        factory = found[0].load()
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"task {name!r} is installed but does not load: {exc}") from exc
    task: Task = factory()
    return task
