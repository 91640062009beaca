"""MVPTR with a task head: one class per fine-tuning task that has one (paper appendix A.3).

A task model is an :class:`MVPTR` (the three encoders and the pre-training heads) plus
``task_head``, scored on the multimodal summary by :meth:`TaskModel.task_logits`:

* :class:`MVPTRForVQA`: an answer classifier (``answers``: class index -> answer string);
* :class:`MVPTRForVE`: a 3-way pair classifier (SNLI-VE's entailment / neutral / contradiction).

Retrieval and phrase grounding fine-tune the plain :class:`MVPTR` (they have no head).
"""

from __future__ import annotations

import torch

from ..core.config import ModelConfig
from .heads import AnswerClassifier, PairClassifier
from .modeling import MVPTR, FusedOutput

__all__ = ["TaskModel", "MVPTRForVQA", "MVPTRForVE"]


class TaskModel(MVPTR):
    """An MVPTR with ``task_head``. Subclasses build the head in :meth:`add_head` from the
    keyword arguments that :meth:`task_args` gives back (saved in ``task.json``)."""

    def __init__(self, cfg: ModelConfig, num_phrases: int, tag_pieces: torch.Tensor, **task):
        super().__init__(cfg, num_phrases, tag_pieces)
        self.add_head(**task)

    def add_head(self, **task) -> None:
        raise NotImplementedError

    def task_args(self) -> dict:
        raise NotImplementedError

    def task_logits(self, fused: FusedOutput) -> torch.Tensor:
        """The head's outputs on the multimodal summary of a fused batch."""
        return self.task_head(self.pool(fused.hidden, fused.mask))

    @classmethod
    def build(cls, cfg: ModelConfig, num_phrases: int, tag_pieces: torch.Tensor, **task) -> TaskModel:
        """Like the constructor, but the head's initialisation draws nothing from the global
        random generator (it is about to be overwritten by saved weights)."""
        model = cls.__new__(cls)
        MVPTR.__init__(model, cfg, num_phrases, tag_pieces)
        with torch.random.fork_rng(devices=[]):
            model.add_head(**task)
        return model

    @classmethod
    def from_base(cls, base: MVPTR, **task) -> TaskModel:
        """``base``'s encoders and pre-training heads (copied; a task head of ``base`` is left
        behind) under a new head. Only the new head draws from the global random generator."""
        with torch.random.fork_rng(devices=[]):
            model = cls.__new__(cls)
            MVPTR.__init__(model, base.cfg, base.num_phrases, base.tag_pieces)
        model.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("task_head.")})
        model.add_head(**task)
        return model.to(base.tag_pieces.device).train(base.training)


class MVPTRForVQA(TaskModel):
    """VQA as classification over an answer vocabulary (3129 answers for VQA v2)."""

    def add_head(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.task_head = AnswerClassifier(self.cfg, len(self.answers)).to(self.tag_pieces.device)
        self.task_head.answers = self.answers  # class index -> answer string

    def task_args(self) -> dict:
        return {"answers": list(self.answers)}


class MVPTRForVE(TaskModel):
    """Visual entailment: (image, hypothesis) -> entailment / neutral / contradiction."""

    def add_head(self, num_labels: int = 3) -> None:
        self.task_head = PairClassifier(self.cfg, num_labels).to(self.tag_pieces.device)

    def task_args(self) -> dict:
        return {"num_labels": self.task_head.classifier.out_features}

