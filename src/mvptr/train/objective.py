"""What a pre-training objective declares: its name, what it needs from the batch and the
encoders, its loss and its default weight. The table of them is ``objectives.py``; the
encoder passes they share are ``passes.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..core.config import ObjectiveConfig
from ..core.errors import ConfigError

# the input sets a collator masks for an objective, with the setting that gives the probability
MASKED_INPUTS = {"words": "mlm_mask_prob", "phrases": "phrase_mask_prob", "tags": "tag_mask_prob"}
# the inputs an objective may need, each with its switch (objectives.use_<input>)
INPUTS = ("phrases", "tags")


def _never(batch: dict) -> bool:
    return False


@dataclass(frozen=True)
class Objective:
    """One pre-training objective.

    ``loss(passes)`` is the objective's loss, a scalar tensor (or None: nothing to learn from
    this batch, as MCR^s with ``objectives.mcr_s_loss=false``), computed from the shared
    encoder passes (``passes.Passes``: the model, the batch, the settings and the outputs
    every objective reads). What it needs from them:

    - ``masks``: the input set the collator corrupts for it ("words", "phrases", "tags"; "" none),
      with the probability ``objectives.<MASKED_INPUTS[masks]>``;
    - ``inputs``: the inputs it reads; it is off when one is switched off (``objectives.use_<input>``);
    - ``cross_modal``: it reads the multimodal encoder, over each caption with its image and with
      the ITM negatives (the stage then trains the cross-modal parameters);
    - ``negatives``: on the merged-attention model, it needs those negative pairs in that pass;
    - ``keeps_wpg_layer``: it reads the multimodal outputs at ``model.wpg_layer``;
    - ``reads_pair_words(batch)``: it reads the word outputs of that pass, not only its summary;
    - ``merged``: the merged-attention model can train it (it has no uni-modal encoders);
    - ``check(objectives)``: raises ValueError for settings it cannot run with.

    ``weight`` is its default weight in a stage's sum (``stage.loss_weights`` overrides it);
    ``title`` names it in figures.
    """

    name: str
    loss: Callable[[Any], torch.Tensor | None]
    title: str = ""
    weight: float = 1.0
    masks: str = ""
    inputs: tuple[str, ...] = ()
    cross_modal: bool = False
    negatives: bool = False
    keeps_wpg_layer: bool = False
    reads_pair_words: Callable[[dict], bool] = _never
    merged: bool = True
    check: Callable[[ObjectiveConfig], None] | None = None

    def __post_init__(self):
        if not self.name or "." in self.name or "=" in self.name:
            raise ConfigError(f"objective name {self.name!r}: a non-empty name without '.' or '=' (it is a config key)")
        if self.masks and self.masks not in MASKED_INPUTS:
            raise ConfigError(f"objective {self.name}: masks={self.masks!r} "
                             f"(expected one of {', '.join(MASKED_INPUTS)})")
        unknown = [i for i in self.inputs if i not in INPUTS]
        if unknown:
            raise ConfigError(f"objective {self.name}: unknown inputs {unknown} (expected some of {', '.join(INPUTS)})")

    def inputs_on(self, obj: ObjectiveConfig) -> bool:
        """Whether every input it reads is switched on."""
        return all(getattr(obj, f"use_{i}") for i in self.inputs)
