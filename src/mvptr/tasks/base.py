"""What a downstream task is: one class per task on the :class:`Task` base, which declares its
settings, its training data (dataset, collator, head), its loss, its metric and its report rows.
The one trainer runs every task (``mvptr.workflows.finetune``); the table ``mvptr.tasks.table``
names them.

The helpers below are what several tasks share: the task's images, its collator, and the
head's predictions over a dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoint.model_dir import Bundle
from ..core import distributed
from ..core.config import Config, TaskConfig
from ..core.errors import FormatError, SkippedSamples
from ..data.builders import collator
from ..data.pretrain import ImageSource, open_images
from ..data.tasks import TaskCollator, TaskImages
from ..text.tokenizer import WordPieces
from ..train.recipes import Recipe

# the TaskConfig fields every task reads; a task adds its own in ``reads``
COMMON_FIELDS = ("train", "train_split", "eval_split", "max_train", "max_eval", "dropout",
                 "max_tokens", "max_tags", "max_regions")


@dataclass(kw_only=True)
class TaskRun:
    """One training or evaluation of a task: the run's configuration (the task's input limits
    already in ``cfg.data``), the model, the task's settings and where results go."""

    cfg: Config
    bundle: Bundle
    t: TaskConfig
    out_dir: Path | None = None
    progress: bool = True
    skip: SkippedSamples | None = None
    mask_regions: bool = False  # hide every region and tag (a text-only baseline)
    group_of: Callable[[str], str] | None = None  # a text's group, for per-group accuracies


class Task:
    """A downstream task. ``name`` is its command-line name and its ``finetune.<name>`` section;
    ``reads``: the TaskConfig fields it reads (any other must keep its default);
    ``uses_objectives``: it trains with pre-training objectives (``train.objectives``, their
    loss weights and negative warm-up); ``needs_head``: evaluating it needs its fine-tuned head."""

    name = ""
    reads: tuple[str, ...] = COMMON_FIELDS
    uses_objectives = False
    needs_head = False

    def defaults(self) -> TaskConfig:
        """The task's settings before the preset and the overrides (``mvptr.core.config.task_config``)."""
        raise NotImplementedError

    def train_data(self, run: TaskRun) -> tuple[Dataset, Callable, dict]:
        """The training set, its collator, and what ``task.json`` records beside the model (the
        head's arguments); a task with a head attaches a new one to ``run.bundle`` here."""
        raise NotImplementedError

    def attach_head(self, bundle: Bundle, info: dict, init: bool = True) -> None:
        """Make ``bundle.model`` the task's model, its head built from ``info`` (``task.json``);
        ``init``: initialise it (a saved head is loaded over it otherwise). None by default."""

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The task's losses on a collated batch (named as they are logged)."""
        raise NotImplementedError

    def recipe(self, cfg: Config, t: TaskConfig, merged: bool = False) -> Recipe:
        """How the trainer turns a batch into losses (``t``: the task's settings); ``merged``:
        for the merged-attention model."""
        return Recipe(self.name, self.loss)

    def evaluate(self, run: TaskRun) -> dict:
        """The task's metrics on ``run.t.eval_split``; files it writes go to ``run.out_dir``."""
        raise NotImplementedError

    def report_rows(self, report: dict) -> list[tuple[str, str, Any, str]]:
        """Rows (task, metric, value, baselines) of the demo report's table of fine-tuned tasks,
        read from the demo's ``report``; none where it holds no results of this task."""
        return []


def task_images(cfg: Config, t: TaskConfig) -> TaskImages:
    """The task's images: its own feature files, or the pre-training images with their tags."""
    if not t.features and not t.predictions:
        return TaskImages(open_images(replace(cfg.data, corpora=[]), cfg.model.region_feat_dim))
    d = cfg.data
    return TaskImages(ImageSource(t.features or d.features, t.predictions or d.predictions, cfg.model.region_feat_dim,
                                  d.max_regions, d.max_tags, dedupe_tags=d.dedupe_tags))


def word_pieces(run: TaskRun) -> WordPieces:
    return WordPieces(run.bundle.tokenizer, run.cfg.data.max_tokens)


def task_collator(run: TaskRun, num_answers: int = 0, mask_regions: bool = False) -> TaskCollator:
    """The pre-training collator without masking, plus the task's targets."""
    return TaskCollator(collator(run.cfg, run.bundle), num_answers, mask_regions)


@torch.no_grad()
def predict(run: TaskRun, dataset, collate, num_outputs: int) -> torch.Tensor:
    """Task-head outputs for every example; under torchrun each process predicts its share."""
    model, device = run.bundle.model, run.cfg.device
    mine = Subset(dataset, range(len(dataset))[distributed.shard(len(dataset))])
    outs = [torch.zeros(0, num_outputs, device=device)]
    for batch in DataLoader(mine, batch_size=run.cfg.eval.batch_size, collate_fn=collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        _, fused = model.fuse_batch(batch)
        outs.append(model.task_logits(fused).float())
    return distributed.gather_rows(torch.cat(outs)).cpu()


def classification_accuracy(pred: torch.Tensor, gold: torch.Tensor, labels) -> dict:
    """Accuracy (percent) overall and per gold label (recall of each class); no example is an error."""
    if len(gold) == 0:
        raise FormatError("classification: no examples to evaluate")
    per_label = {name: round(100.0 * (pred[gold == k] == k).float().mean().item(), 2)
                 for k, name in enumerate(labels) if (gold == k).any()}
    return {"acc": round(100.0 * (pred == gold).float().mean().item(), 2), "per_label": per_label}
