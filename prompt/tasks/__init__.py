"""Pre-built task templates: the work definitions a next-visit resurrects."""

from prompt.tasks.spec import TEMPLATE_FIELDS, TaskFile, TaskSpec, load_task_file
from prompt.tasks.store import (
    ApplyResult,
    Task,
    apply_tasks,
    load_active_tasks,
    load_task,
    match_task,
)

__all__ = [
    "TEMPLATE_FIELDS",
    "ApplyResult",
    "Task",
    "TaskFile",
    "TaskSpec",
    "apply_tasks",
    "load_active_tasks",
    "load_task",
    "load_task_file",
    "match_task",
]
