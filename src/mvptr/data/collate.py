"""Batches: BERT's 80/10/10 masking of words, tags and phrases as the objectives ask, and the
collator that pads captions, phrases, tags and regions into tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..core.errors import ConfigError
from ..text.tokenizer import IGNORE, MASK_ID, PAD_ID, WordPieces, pad_lists
from .batch import Batch

FIRST_WORD_ID = 999  # ids below are [unused]/special rows; random replacements skip them
def bert_mask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    prob: float,
    mask_value: int,
    random_ids: tuple[int, int],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select candidates with ``prob``; of those 80% -> mask_value, 10% -> a random id in
    ``random_ids`` = [low, high), 10% kept.

    Returns (masked ids, labels) with labels = original id at selected positions, else IGNORE.
    """
    u = torch.rand(ids.shape, generator=generator)
    selected = candidates & (u < prob)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    v = torch.rand(ids.shape, generator=generator)
    out = ids.clone()
    out[selected & (v < 0.8)] = mask_value
    rand = selected & (v >= 0.8) & (v < 0.9)
    random_low, random_high = random_ids
    if random_high > random_low:
        out[rand] = torch.randint(random_low, random_high, (int(rand.sum()),), generator=generator)
    return out, labels
def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor for a batch. In a DataLoader worker it is allocated in
    shared memory, as torch's default collate does, so the batch goes to the main process as
    a handle; otherwise the DataLoader would copy it into shared memory (26 MB for 64 x 50 x
    2054 region features)."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.empty(0)._typed_storage()._new_shared(int(np.prod(shape)))
    return torch.empty(0).new(storage).view(shape)
@dataclass
class Masking:
    """Which sets to mask in a batch, and with what probability (0 = not masked).
    ``tie_phrases``: a phrase that contains a word masked for MLM is also an MCR^s target,
    masked in the pass MCR^s reads (the official code's tied masking)."""

    words: float = 0.0
    phrases: float = 0.0
    tags: float = 0.0
    tie_phrases: bool = False


@dataclass(frozen=True)
class CollateSettings:
    """What a collator feeds the model. ``tag_mode``: "concepts" (each tag one unit, a tag class)
    or "word_pieces" (each piece of each tag a unit: the official code's reading);
    ``use_phrases`` / ``use_tags``: the inputs switched on (``objectives.use_*``); ``masking``: what
    the active objectives mask (``mvptr.train.objectives.stage_masking``); ``separate_mlm``: words
    masked for MLM go to a pass of their own (``objectives.mlm_separate_pass``)."""

    tag_mode: str = "concepts"
    use_phrases: bool = True
    use_tags: bool = True
    masking: Masking = field(default_factory=Masking)
    separate_mlm: bool = True


class Collator:
    """Pads a list of samples into tensors and applies the masking of the active objectives.

    Words masked for MLM go to ``mlm_input_ids`` (``separate_mlm``, the default) or replace
    ``input_ids`` (one shared masked pass, the official code's choice). In the pass MLM reads,
    every phrase that was parsed from a masked word is [MASK] too (``mlm_phrase_ids``, or
    ``phrase_ids`` when the pass is shared), so that no phrase row gives the word away, in
    whatever form the phrase holds it ("women" masked hides "old woman"). A sample's
    ``phrase_positions`` (for each of its phrases, the positions in ``input_ids`` of the word
    pieces it was parsed from) says which; in a sample without them, every phrase is masked
    in that pass when one of its words is.
    ``phrase_masked`` marks the phrases whose row in ``phrase_ids`` is not their own.

    Concept mode: each tag is one unit (a tag class, embedded as the mean of its pieces) and
    MCR^v labels are tag-class indices. Word-piece mode: each piece of each tag is a unit
    and labels are word ids (the official code's reading).
    """

    def __init__(self, pieces: WordPieces, tag_vocab: list[str], num_phrases: int, vocab_size: int,
                 settings: CollateSettings | None = None, generator: torch.Generator | None = None):
        """``num_phrases``: the phrase vocabulary's size; ``vocab_size``: the word vocabulary's;
        ``generator``: the masking's random numbers (the trainer re-seeds it for every pass)."""
        self.settings = settings = settings or CollateSettings()
        if settings.tag_mode not in ("concepts", "word_pieces"):
            raise ConfigError(f"unknown tag_mode {settings.tag_mode!r} (expected 'concepts' or 'word_pieces')")
        self.pieces, self.tag_vocab, self.tag_mode = pieces, tag_vocab, settings.tag_mode
        self.tag_index = {name: i for i, name in enumerate(tag_vocab)}
        self.num_phrases, self.vocab_size = num_phrases, vocab_size
        self.use_phrases, self.use_tags = settings.use_phrases, settings.use_tags
        self.masking = settings.masking
        self.generator = generator
        self.separate_mlm = settings.separate_mlm
        # rows 0..T-1: vocabulary tags; row T: [MASK]; unknown tags are appended per batch
        self.tag_table = [self.pieces.pieces(name) for name in tag_vocab] + [(MASK_ID,)]

    def _tags(self, batch_tags: list[list[str]]) -> dict:
        if self.tag_mode == "word_pieces":
            units = [[p for name in tags for p in self.pieces.pieces(name)] for tags in batch_tags]
            ids = pad_lists(units, PAD_ID)
            present = ids != PAD_ID
            ids, labels = bert_mask(
                ids, present, self.masking.tags, MASK_ID, (FIRST_WORD_ID, self.vocab_size), self.generator
            )
            return {"tag_pieces": ids[..., None], "tag_mask": present, "tag_labels": labels}
        table = list(self.tag_table)
        extra: dict[str, int] = {}
        rows = []
        for tags in batch_tags:
            row = []
            for name in tags:
                i = self.tag_index.get(name)
                if i is None:  # a class unseen in training: embedded, never a target
                    i = extra.setdefault(name, len(table))
                    if i == len(table):
                        table.append(self.pieces.pieces(name))
                row.append(i)
            rows.append(row)
        idx = pad_lists(rows, -1)
        present = idx >= 0
        known = present & (idx < len(self.tag_vocab))
        idx_masked, labels = bert_mask(
            idx, known, self.masking.tags, len(self.tag_vocab), (0, len(self.tag_vocab)), self.generator
        )
        piece_table = pad_lists([list(t) for t in table], PAD_ID)
        pieces = piece_table[idx_masked.clamp(min=0)]
        pieces[~present] = PAD_ID
        return {"tag_pieces": pieces, "tag_mask": present, "tag_labels": labels}

    def __call__(self, items: list[dict]) -> Batch:
        """The samples' tensors, as ``Batch`` documents them."""
        batch: Batch = {}
        if "input_ids" in items[0]:
            batch.update(self.text(items))
        if "region_feats" in items[0]:
            batch.update(self.image(items))
        if "image_index" in items[0]:
            batch["image_index"] = torch.tensor([it["image_index"] for it in items])
        return batch

    def text(self, items: list[dict]) -> dict:
        input_ids = pad_lists([it["input_ids"] for it in items], PAD_ID)
        word_mask = input_ids != PAD_ID
        tok = self.pieces.tokenizer
        special = (input_ids == tok.cls_token_id) | (input_ids == tok.sep_token_id)
        masked_ids, mlm_labels = bert_mask(
            input_ids, word_mask & ~special, self.masking.words, MASK_ID, (FIRST_WORD_ID, self.vocab_size),
            self.generator
        )
        # with a separate MLM pass the other objectives keep every word
        words = ({"input_ids": input_ids, "mlm_input_ids": masked_ids} if self.separate_mlm
                 else {"input_ids": masked_ids})
        phrases = pad_lists([it["phrases"] if self.use_phrases else [] for it in items], -1)
        phrase_mask = phrases >= 0
        phrases_masked, phrase_labels = bert_mask(
            phrases, phrase_mask, self.masking.phrases, -2, (0, self.num_phrases), self.generator
        )
        # phrase rows sit after the word rows of the shared table; -2 marks [MASK]
        phrase_ids = torch.where(phrases_masked == -2, torch.tensor(MASK_ID), phrases_masked + self.vocab_size)
        phrase_ids[~phrase_mask] = PAD_ID
        leaks = self._leaking_phrases(items, mlm_labels != IGNORE, phrases.shape[1]) & phrase_mask
        if self.masking.tie_phrases:  # official: they are MCR^s targets, masked where MCR^s reads
            phrase_labels = torch.where(leaks & (phrase_labels == IGNORE), phrases, phrase_labels)
            phrase_ids = phrase_ids.masked_fill(leaks, MASK_ID)
        mlm_phrases = phrase_ids.masked_fill(leaks, MASK_ID)
        if self.separate_mlm:
            words["mlm_phrase_ids"] = mlm_phrases
        else:
            phrase_ids = mlm_phrases
        return {
            **words,
            "word_mask": word_mask,
            "mlm_labels": mlm_labels,
            "phrase_ids": phrase_ids,
            "phrase_mask": phrase_mask,
            "phrase_labels": phrase_labels,
            "phrase_masked": (phrase_labels != IGNORE) | (phrase_ids == MASK_ID),
        }

    def _leaking_phrases(self, items: list[dict], masked_words: torch.Tensor, width: int) -> torch.Tensor:
        """(B, width): the phrases parsed from a word piece masked for MLM (by the samples'
        ``phrase_positions``); every phrase of a sample without positions that has a masked piece."""
        b_size, n = masked_words.shape
        if not masked_words.any() or not width:
            return torch.zeros(b_size, width, dtype=torch.bool)
        cover = np.zeros((b_size, width, n), dtype=bool)  # phrase j of sample b was parsed from piece k
        for b, it in enumerate(items):
            positions = it.get("phrase_positions")
            if positions is None:
                cover[b] = True
                continue
            if len(positions) != len(it["phrases"]):
                raise ValueError(f"a sample has {len(it['phrases'])} phrases but positions for {len(positions)}")
            for j, pos in enumerate(positions):
                cover[b, j, [k for k in pos if k < n]] = True
        return (torch.from_numpy(cover) & masked_words[:, None, :]).any(-1)

    def image(self, items: list[dict]) -> dict:
        tags = self._tags([it["tags"] if self.use_tags else [] for it in items])
        n = max(len(it["region_feats"]) for it in items)
        d = items[0]["region_feats"].shape[1]
        region_feats = _batch_tensor((len(items), n, d))
        feats = region_feats.numpy()
        boxes = np.zeros((len(items), n, 4), dtype=np.float32)
        region_mask = np.zeros((len(items), n), dtype=bool)
        for i, it in enumerate(items):
            k = len(it["region_feats"])
            feats[i, :k] = it["region_feats"]
            feats[i, k:] = 0
            boxes[i, :k] = it["boxes"]
            region_mask[i, :k] = True
        return {
            **tags,
            "region_feats": region_feats,
            "region_mask": torch.from_numpy(region_mask),
            "boxes": torch.from_numpy(boxes),
            "image_size": torch.tensor([[it["width"], it["height"]] for it in items], dtype=torch.float32),
        }
