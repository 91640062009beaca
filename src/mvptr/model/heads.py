"""Prediction heads. Concept and token classifiers score against rows of the shared
embedding table (tied weights), so a phrase's input row and its output class are one vector."""

from __future__ import annotations

import torch
from torch import nn

from ..core.config import ModelConfig
from .layers import Transform


class TiedClassifier(nn.Module):
    """Transform, then dot products with a table of candidate rows, plus a bias per candidate."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.transform = Transform(cfg)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ table.t() + self.bias


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the sequence summary ([CLS] output, or the mean)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(summary))


class PairClassifier(nn.Module):
    """Pooler + linear layer on the multimodal summary: ITM (2 classes), SNLI-VE (3), VQA (answers)."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.pooler = Pooler(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, num_classes)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(summary))


class AnswerClassifier(nn.Module):
    """VQA head: a 2-layer MLP (BERT's prediction transform, then a linear layer over the
    answers) on the multimodal summary (paper appendix A.3.2)."""

    def __init__(self, cfg: ModelConfig, num_answers: int):
        super().__init__()
        self.transform = Transform(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, num_answers)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(summary))

    @torch.no_grad()
    def init_from_mlm(self, mlm_head: TiedClassifier, word_rows: torch.Tensor, answer_pieces: torch.Tensor) -> None:
        """Start as the MLM head averaged over each answer's word pieces: the transform is
        copied, and answer a's row and bias are the mean of the decoder rows (the tied word
        embeddings) and biases of its pieces ``answer_pieces[a]`` (0-padded)."""
        self.transform.load_state_dict(mlm_head.transform.state_dict())
        present = (answer_pieces != 0).to(word_rows.dtype)
        count = present.sum(1, keepdim=True).clamp(min=1.0)
        self.classifier.weight.copy_((word_rows[answer_pieces] * present[..., None]).sum(1) / count)
        self.classifier.bias.copy_((mlm_head.bias[answer_pieces] * present).sum(1) / count[:, 0])
