"""Prediction heads. Concept and token classifiers score against rows of the shared
embedding table (tied weights), so a phrase's input row and its output class are one vector."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
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
