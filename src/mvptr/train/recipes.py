"""Training recipes as data: which objectives, which parameters train, how a batch becomes losses.

A pre-training stage's loss is the weighted sum of its objectives' losses (``objectives.py``:
one declaration each) over the encoder passes they share (``passes.py``; the merged-attention
model's, Table 4 "MergAttn", in ``merged.py``). Each objective can be left out of a stage's
list or switched off, and the phrase / tag inputs can be switched off, for the ablations.
A fine-tuning task gives its own recipe (``mvptr.tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.config import ObjectiveConfig
from ..core.errors import ConfigError
from ..model.modeling import MVPTR
from .merged import MergedPasses
from .objective import Objective
from .objectives import OBJECTIVES, active_objectives
from .passes import TwoStreamPasses

__all__ = ["OBJECTIVES", "Recipe", "pretraining_recipe", "pretraining_losses", "merged_losses"]
# parameters that only the cross-modal objectives reach (the merged-attention model has no
# multimodal encoder: its ITM and MLM heads are its only such parameters)
CROSS_MODAL_MODULES = ("multimodal_encoder.", "mlm_head.", "itm_head.")


@dataclass
class Recipe:
    """``weights``: each loss's weight in the sum the optimizer steps on (unlisted: 1);
    ``lr_scale``: a parameter's learning rate as a multiple of the stage's."""

    name: str
    loss: Callable[[MVPTR, dict, torch.Generator], dict[str, torch.Tensor]]
    trainable: Callable[[str], bool] = field(default=lambda name: True)
    weights: dict[str, float] = field(default_factory=dict)
    lr_scale: Callable[[str], float] = field(default=lambda name: 1.0)


def pretraining_recipe(name: str, objectives: list[str], obj: ObjectiveConfig, merged: bool = False,
                       cross_modal_lr_scale: float = 1.0, *, negative_warmup_steps: int = 0,
                       loss_weights: dict[str, float] | None = None) -> Recipe:
    """``merged``: the recipe of the merged-attention model. ``cross_modal_lr_scale``,
    ``negative_warmup_steps`` and ``loss_weights`` are the stage's (``StageConfig``): each stage,
    and retrieval fine-tuning, has its own. A stage without a cross-modal objective leaves the
    parameters only those reach (``CROSS_MODAL_MODULES``) untrained; ``cross_modal_lr_scale``
    multiplies their learning rate. Each loss weighs its objective's declared weight unless
    ``loss_weights`` names it."""
    try:
        declared = active_objectives(objectives, obj)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None
    for o in declared:
        if o.check is not None:
            o.check(obj)
    if not declared:
        raise ConfigError(f"{name}: every objective is switched off")
    active = [o.name for o in declared]
    cross = any(o.cross_modal for o in declared)
    if merged:
        check_merged_objectives(name, declared, obj)

    def trainable(param_name: str) -> bool:
        return cross or not param_name.startswith(CROSS_MODAL_MODULES)

    def lr_scale(param_name: str) -> float:
        return cross_modal_lr_scale if param_name.startswith(CROSS_MODAL_MODULES) else 1.0

    def loss(model: MVPTR, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if merged:
            return merged_losses(model, batch, active, obj, generator)
        hardness = negative_hardness(batch.get("step"), negative_warmup_steps)
        return pretraining_losses(model, batch, active, obj, generator, hardness)

    # the declared weights that are not the sum's default 1, then the stage's
    weights = {o.name: o.weight for o in declared if o.weight != 1.0} | dict(loss_weights or {})
    return Recipe(name, loss, trainable, weights, lr_scale)


def negative_hardness(step: int | None, warmup_steps: int) -> float:
    """The factor on the sampling logits of ITM / WPG negatives: rising linearly from 0 (uniform)
    to 1 (the paper's p^{v2s} / p^{s2v}) over ``warmup_steps``; 1 outside a training step."""
    if warmup_steps <= 0 or step is None:
        return 1.0
    return min(1.0, step / warmup_steps)


def check_merged_objectives(name: str, active: list[Objective], obj: ObjectiveConfig) -> None:
    """What the merged-attention model cannot train is an error, not ignored. Its negatives are
    uniform, so the negative warm-up (from uniform to the similarity) has nothing to change."""
    for o in active:
        if not o.merged:
            raise ConfigError(
                f"{name}: {o.name} needs what the merged-attention model (model.merged_attention) does not have "
                f"(uni-modal encoders: VSC reads their global embeddings); it trains with "
                f"{', '.join(n for n, d in OBJECTIVES.items() if d.merged)} (Table 4): set objectives.{o.name}=false "
                f"or leave {o.name} out of {name}.objectives")
    if any(o.cross_modal for o in active) and obj.negative_sampling == "hardest":
        raise ConfigError(
            f"objectives.negative_sampling={obj.negative_sampling}: the merged-attention model has no uni-modal "
            "similarity to choose hard negatives by; its negatives are drawn uniformly (leave it at 'sampled' or "
            "'uniform')")


def pretraining_losses(
    model: MVPTR, batch: dict, active: list[str], obj: ObjectiveConfig, generator: torch.Generator | None = None,
    hardness: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The losses of the objectives ``active`` (names) on the two-stream model; ``hardness``: the
    factor on the sampling logits of the ITM / WPG negatives (``negative_hardness``)."""
    declared = [o for name, o in OBJECTIVES.items() if name in active]
    return TwoStreamPasses(model, batch, declared, obj, generator, hardness).losses()


def merged_losses(model: MVPTR, batch: dict, active: list[str], obj: ObjectiveConfig,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The losses of the objectives ``active`` (names) on the merged-attention model."""
    declared = [o for name, o in OBJECTIVES.items() if name in active]
    return MergedPasses(model, batch, declared, obj, generator).losses()

