"""A task's settings: its defaults, then its section of ``finetune`` (preset and overrides),
checked as a whole; and the run's configuration with the task's input limits and dropout."""

from __future__ import annotations

from dataclasses import fields, replace

from ..checkpoint.model_dir import Bundle, rebuild_model
from ..core.config import Config, TaskConfig, task_section
from ..core.errors import ConfigError
from ..core.validation import check_task
from .base import Task

LIMITS = ("max_tokens", "max_tags", "max_regions", "max_phrases")  # a task's own data.max_* (0: data's)


def check_task_config(task: Task, t: TaskConfig) -> None:
    """A field the task does not read must keep its default: setting it is an error, not a no-op."""
    default = TaskConfig()
    for f in fields(TaskConfig):
        if f.name not in task.reads and getattr(t, f.name) != getattr(default, f.name):
            raise ConfigError(f"finetune.{task.name}.{f.name}: the {task.name} task does not read it; leave it unset")
    if not task.uses_objectives and t.train.objectives:
        raise ConfigError(f"finetune.{task.name}.train.objectives: the {task.name} task trains its own head; "
                          "leave it empty")


def settings(cfg: Config, task: Task) -> TaskConfig:
    """``task``'s settings in ``cfg``: its defaults under its ``finetune`` section, checked."""
    key = f"finetune.{task.name}"
    t = task_section(task.defaults(), cfg.finetune.get(task.name), key)
    check_task(key, t, cfg, task.uses_objectives)
    check_task_config(task, t)
    return t


def task_setup(cfg: Config, task: Task, bundle: Bundle | None = None) -> tuple[Config, TaskConfig]:
    """The run's configuration for ``task``: its input limits in place of ``data.max_*``, and,
    given the model to fine-tune, its dropout (the model is rebuilt with it)."""
    t = settings(cfg, task)
    cfg = replace(cfg, data=replace(cfg.data, **{k: getattr(t, k) for k in LIMITS if getattr(t, k)}))
    if bundle is not None and t.dropout >= 0 and t.dropout != bundle.model.cfg.dropout:
        rebuild_model(bundle, replace(bundle.model.cfg, dropout=t.dropout))
        cfg = replace(cfg, model=bundle.model.cfg)
    return cfg, t
