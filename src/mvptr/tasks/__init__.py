"""Downstream tasks: one module per task (dataset, head, loss, metric, settings, report rows),
all in one table. ``TASKS`` and ``register_task`` are in :mod:`mvptr.tasks.table`; the base
class :class:`Task` in :mod:`mvptr.tasks.base`."""

from .base import Task, TaskRun
from .table import TASKS, load_config, load_task_model, register_task, task_named, task_recipe

__all__ = ["TASKS", "Task", "TaskRun", "load_config", "load_task_model", "register_task", "task_named",
           "task_recipe"]
