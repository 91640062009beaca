"""BERT-compatible transformer layers with fused (SDPA) attention.

Parameter names follow Hugging Face's ``BertLayer`` so that a BERT state dict
loads by renaming prefixes only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.config import ModelConfig
from ..core.errors import ConfigError


class Dropout(nn.Module):
    """Dropout whose CPU masks come from 15-bit random numbers, four per 64-bit draw.

    On a CPU, drawing one float per element (``torch.nn.Dropout``) costs about three times
    the rest of the dropout; four 15-bit draws from one 64-bit number cost a third as much.
    An element is kept with probability 1 - round(p * 2^15) / 2^15 (p = 0.1: 0.899994).
    Other devices use ``F.dropout``. Draws come from torch's default generator, so a seeded
    step (and a checkpointed layer's recomputation) draws the same mask.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout probability {p} is not in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
        draws = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF
        keep = draws >= round(self.p * 2**15)
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ConfigError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = Dropout(cfg.attention_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        return x.view(b, n, self.num_heads, h // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, num_queries: int | None = None,
                return_probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """key_mask: (B, L) bool, True where a key may be attended to. With ``num_queries``, only
        the first that many positions ask (every position is still a key): (B, num_queries, H).
        With ``return_probs``, also the attention probabilities (B, heads, queries, L), before dropout."""
        q = self._heads(self.query(x[:, :num_queries]))
        k, v = self._heads(self.key(x)), self._heads(self.value(x))
        mask = key_mask[:, None, None, :]
        p = self.attention_dropout.p if self.training else 0.0
        weights = None
        if return_probs or (p and x.device.type == "cpu"):
            # SDPA's CPU kernels have no dropout, and SDPA never returns its weights: its fallback
            # does these same steps, but draws the dropout mask one float per weight (see Dropout)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)
            out = (self.attention_dropout(weights) if p else weights) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, _, n, d = out.shape
        out = out.transpose(1, 2).reshape(b, n, -1)
        return (out, weights) if return_probs else out


class ResidualOutput(nn.Module):
    """Dense projection back to the hidden size, dropout, residual, LayerNorm (both sub-layers)."""

    def __init__(self, cfg: ModelConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = ResidualOutput(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        return self.output(self.self(x, key_mask, num_queries), x[:, :num_queries])


class Intermediate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = ResidualOutput(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H); with ``num_queries`` only the first positions' outputs, (B, num_queries, H)."""
        a = self.attention(x, key_mask, num_queries)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    """A stack of layers; can stop early and hand back chosen intermediate layers."""

    def __init__(self, cfg: ModelConfig, num_layers: int):
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(cfg) for _ in range(num_layers))
        self.checkpointing = cfg.activation_checkpointing
        if cfg.compile != "none":
            for layer in self.layer:  # in place: parameter names and the state dict are unchanged
                layer.compile(backend=cfg.compile)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor,
        keep_layers: tuple[int, ...] = (),
        stop_after: int | None = None,
        last_queries: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run layers 1..stop_after (1-based); return the last output and {layer: output} for keep_layers.
        ``last_queries``: the last layer computes only the first that many positions (a summary
        read from [CLS] needs one), which saves nearly all of that layer's work."""
        kept = {}
        layers = self.layer[:stop_after]
        for i, layer in enumerate(layers, start=1):
            queries = last_queries if i == len(layers) else None
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # dropout draws are replayed in the recomputation, so the gradient is unchanged
                x = checkpoint(layer, x, key_mask, queries, use_reentrant=False)
            else:
                x = layer(x, key_mask, queries)
            if i in keep_layers:
                kept[i] = x
        return x, kept


class Embeddings(nn.Module):
    """Shared table of word, tag and phrase rows, plus BERT's position and segment embeddings."""

    def __init__(self, cfg: ModelConfig, num_phrases: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size + num_phrases, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self, rows: torch.Tensor, position_ids: torch.Tensor | None, token_type: int
    ) -> torch.Tensor:
        """rows: already looked-up (B, L, H) inputs; position_ids None means no position embedding."""
        x = rows + self.token_type_embeddings.weight[token_type]
        if position_ids is not None:
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class Transform(nn.Module):
    """BERT's prediction-head transform: dense, GELU, LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))
