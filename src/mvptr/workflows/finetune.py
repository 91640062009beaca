"""Fine-tuning and evaluation on a downstream task (paper 4.2, appendix A.3).

Each task is a module of ``mvptr.tasks`` (its data, head, loss, metric and settings), named
in the table ``mvptr.tasks.TASKS``; here the one trainer runs it and its metric evaluates it.

A fine-tuned model directory is an ordinary model directory (the encoders) plus, for tasks
with a head, ``task_head.safetensors`` and ``task.json`` (the task and its head's arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint.model_card import note_evaluation, note_run
from ..checkpoint.model_dir import Bundle, record_training, write_model_card
from ..checkpoint.task_dir import save_task_model
from ..core import distributed
from ..core.config import Config, TaskConfig, to_dict
from ..core.errors import ConfigError, SkippedSamples
from ..core.runtime import torch_settings
from ..tasks import TaskRun, task_named
from ..tasks.base import classification_accuracy
from ..tasks.grounding import grounding_dataset
from ..tasks.settings import check_task_config as check_settings
from ..tasks.settings import task_setup as setup
from ..tasks.vqa import vqa_questions
from ..train.loggers import check_loggers, log_figures
from ..train.trainer import TrainResult, claim_run_dir, train
from .pretrain import on_demo_world

__all__ = ["FinetuneResult", "finetune", "evaluate_task", "log_evaluation", "task_setup", "check_task_config",
           "classification_accuracy", "grounding_dataset", "vqa_questions"]


def check_task_config(task: str, t: TaskConfig) -> None:
    """A field the task does not read must keep its default: setting it is an error, not a no-op."""
    check_settings(task_named(task), t)


def task_setup(cfg: Config, task: str, bundle: Bundle | None = None) -> tuple[Config, TaskConfig]:
    """The run's configuration for ``task``: its input limits in place of ``data.max_*``, and,
    given the model to fine-tune, its dropout (the model is rebuilt with it)."""
    return setup(cfg, task_named(task), bundle)


@dataclass
class FinetuneResult:
    train: TrainResult
    model_dir: Path
    examples: int
    skipped: SkippedSamples | None = None  # bad samples left out (data.skip_bad)


def finetune(cfg: Config, task: str, bundle: Bundle, out_dir: str | Path, progress: bool = True, *,
             overwrite: bool = False, skipped: SkippedSamples | None = None) -> FinetuneResult:
    """Fine-tune ``bundle`` (in place) on ``task``; the model goes to ``out_dir/model``. A run
    already in ``out_dir`` is an error unless ``overwrite`` replaces it. With ``cfg.data.skip_bad``
    bad samples go to ``skipped`` (a new one when not given) instead of raising. Torch's thread
    count and deterministic flag are the run's while it trains, the caller's again afterwards."""
    with torch_settings(cfg):
        return _finetune(cfg, task, bundle, Path(out_dir), progress, overwrite, skipped=skipped)


def _finetune(cfg, name, bundle, out_dir, progress, overwrite, *, skipped) -> FinetuneResult:
    skip = (skipped if skipped is not None else SkippedSamples()) if cfg.data.skip_bad else None
    task = task_named(name)
    cfg, t = setup(cfg, task, bundle)
    check_loggers(t.train.loggers, f"finetune.{name}.train.loggers")
    out_dir = Path(out_dir)
    if distributed.active().main:
        claim_run_dir(out_dir, resume=False, overwrite=overwrite)
    dataset, collate, task_info = task.train_data(TaskRun(cfg=cfg, bundle=bundle, t=t, out_dir=out_dir,
                                                             progress=progress, skip=skip))
    info: dict = {"task": name, "train_split": t.train_split, "mask_regions": t.mask_regions, **task_info}
    recipe = task.recipe(cfg, t, bundle.model.merged)
    record_training(bundle, cfg.data, t.train.objectives)
    data = {"split": t.train_split, "samples": len(dataset), "corpora": getattr(dataset, "corpus_counts", {})}
    note_run(bundle.card, f"fine-tuning {name}", data, t.train.objectives, to_dict(cfg), on_demo_world(cfg))
    result = train(bundle, recipe, dataset, collate, t.train, out_dir, seed=cfg.seed, device=cfg.device,
                   num_workers=cfg.data.num_workers, progress=progress)
    model_dir = out_dir / "model"
    if distributed.active().main:
        save_task_model(model_dir, bundle, info)
    bundle.task = info
    distributed.barrier()
    return FinetuneResult(result, model_dir, len(dataset), skip)


def log_evaluation(cfg: Config, task: str, out_dir: str | Path, figures: dict, result: FinetuneResult,
                   bundle: Bundle) -> None:
    """``evaluate_task``'s figures of the model ``result`` fine-tuned: to the trackers of the task's
    ``train.loggers`` (under ``eval/``, at its last step; metrics.jsonl keeps the training records
    only) and to the model directory's card."""
    _, t = setup(cfg, task_named(task))
    note_evaluation(bundle.card, task, figures)
    if distributed.active().main:
        log_figures(t.train.loggers, out_dir, f"{Path(out_dir).name}/{task} evaluation", figures, result.train.steps)
        write_model_card(result.model_dir, bundle)


@torch.no_grad()
def evaluate_task(cfg: Config, task: str, bundle: Bundle, out_dir: str | Path | None = None,
                  progress: bool = True, mask_regions: bool | None = None,
                  *, group_of: Callable[[str], str] | None = None, skipped: SkippedSamples | None = None) -> dict:
    """Evaluate ``bundle`` on ``task``'s evaluation split; files (VQA results, retrieval pair
    scores) go to ``out_dir`` when given. ``mask_regions`` defaults to the task config's.
    ``group_of`` (SNLI-VE): a hypothesis's group; the accuracies of each group are added under
    ``per_group``. With ``cfg.data.skip_bad`` bad samples go to ``skipped`` instead of raising."""
    skip = (skipped if skipped is not None else SkippedSamples()) if cfg.data.skip_bad else None
    spec = task_named(task)
    cfg, t = setup(cfg, spec)
    bundle.model.eval()
    if spec.needs_head and not hasattr(bundle.model, "task_head"):
        raise ConfigError(f"{task}: the model has no task head; fine-tune it first (`mvptr finetune {task}`)")
    hide = t.mask_regions if mask_regions is None else mask_regions
    out_dir = Path(out_dir) if out_dir is not None else None
    return spec.evaluate(TaskRun(cfg=cfg, bundle=bundle, t=t, out_dir=out_dir, progress=progress, skip=skip,
                                 mask_regions=hide, group_of=group_of))
