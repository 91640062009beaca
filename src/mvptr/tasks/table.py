"""The table of downstream tasks: the command line's choices, the ``finetune`` sections the
configuration accepts, what ``finetune`` and ``evaluate`` run and the demo report's rows all
come from ``TASKS``. A task of the package is imported here by name; code outside the package
adds its own with :func:`register_task`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..checkpoint.model_dir import Bundle
from ..checkpoint.task_dir import read_task_model
from ..core.config import Config
from ..core.config import load_config as load_base_config
from ..core.errors import ConfigError
from ..train.recipes import Recipe
from .base import Task
from .grounding import Grounding
from .retrieval import Retrieval
from .settings import settings
from .ve import VisualEntailment
from .vqa import VQA, EasyVQA

TASKS: dict[str, Task] = {task.name: task for task in (Retrieval(), VQA(), VisualEntailment(), Grounding(),
                                                       EasyVQA())}


def register_task(task: Task, replace_existing: bool = False) -> Task:
    """Add ``task`` to the table under ``task.name`` (a name already there is an error unless
    ``replace_existing``); it is then a choice of ``mvptr finetune`` / ``evaluate`` and its
    ``finetune.<name>`` section a part of the configuration."""
    if not task.name or "." in task.name or "=" in task.name:
        raise ConfigError(f"task name {task.name!r}: expected a non-empty name without '.' or '='")
    if task.name in TASKS and not replace_existing:
        raise ConfigError(f"a task named {task.name!r} is registered already ({type(TASKS[task.name]).__name__})")
    TASKS[task.name] = task
    return task


def task_named(name: str) -> Task:
    """The registered task ``name``; any other name is an error listing the registered ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (registered tasks: {', '.join(TASKS)})")
    return TASKS[name]


def check_tasks(cfg: Config) -> Config:
    """``cfg`` with every registered task's settings resolved (its defaults under its section)
    and checked; a section that names no registered task is an error."""
    for name in cfg.finetune:
        if name not in TASKS:
            raise ConfigError(f"finetune.{name}: no task of that name (registered tasks: {', '.join(TASKS)})")
    return replace(cfg, finetune={name: settings(cfg, task) for name, task in TASKS.items()})


def load_config(preset: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """``mvptr.core.config.load_config`` with the tasks' settings resolved and checked: every
    ``finetune.<task>`` section is whole, and a bad one an error when the config is built."""
    return check_tasks(load_base_config(preset, overrides))


def task_recipe(name: str, cfg: Config, merged: bool = False) -> Recipe:
    """The recipe task ``name`` trains with under ``cfg`` (its settings resolved)."""
    task = task_named(name)
    return task.recipe(cfg, settings(cfg, task), merged)


def load_task_model(path: str | Path, device: str = "cpu", trust_pickle: bool = False, **hub) -> Bundle:
    """A model directory or a Hugging Face Hub repo id (``hub``: ``revision``, ``cache_dir``,
    ``local_files_only``, ``token``), as its task's model with the saved head when it has one
    (``task.json`` names the task, which must be registered)."""
    def attach(bundle: Bundle, info: dict) -> None:
        try:
            task = task_named(info["task"])
        except ConfigError as err:
            raise ConfigError(f"{Path(path) / 'task.json'}: {err}; register the task first") from None
        task.attach_head(bundle, info, init=False)

    return read_task_model(path, device, attach, trust_pickle, **hub)
