"""Image-caption pairs as MVPTR's multi-level input, and the batch collator with masking.

A sample is a caption (word pieces + phrase concepts) and its image (region features +
tags). The collator pads, then masks words (MLM), phrases (MCR^s) and tags (MCR^v) with
BERT's 80/10/10 rule, vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..core.config import CorpusConfig, DataConfig, ObjectiveConfig
from ..core.errors import ConfigError, FormatError, SkippedSamples, skip_or_raise
from ..formats.captions import CaptionRecord, ImageIds, read_captions
from ..formats.phrase_cache import phrase_key, read_phrase_cache
from ..formats.tags import read_tag_file
from ..text.phrases import PhraseVocab
from ..text.tokenizer import IGNORE, MASK_ID, PAD_ID, WordPieces, pad_lists
from ..vision.stores import CorpusStores, open_store

FIRST_WORD_ID = 999  # ids below are [unused]/special rows; random replacements skip them


@dataclass
class GroundTruthTags:
    """Ground-truth tags that replace the detector's (``data.tags``): labels by image id, and
    the file(s) they came from, for errors."""

    labels: dict[str, list[str]]
    source: str


class ImageSource:
    """Regions and tags of an image from a feature store: a memmap store directory or the
    VinVL ``features.tsv`` + ``predictions.tsv`` pair (see ``mvptr.vision.stores``). Tags are
    the detections' class names, most confident first, or the image's ground-truth labels
    (``gt_tags``); ``dedupe_tags`` keeps each class once (the official code's choice)."""

    def __init__(self, features: str, predictions: str, feat_dim: int, max_regions: int, max_tags: int,
                 skip: SkippedSamples | None = None, gt_tags: GroundTruthTags | None = None,
                 dedupe_tags: bool = False):
        self.store = open_store(features, predictions, feat_dim, skip)
        self.max_regions, self.max_tags = max_regions, max_tags
        self.gt_tags, self.dedupe_tags = gt_tags, dedupe_tags

    @classmethod
    def of_store(cls, store, max_regions: int, max_tags: int, gt_tags: GroundTruthTags | None = None,
                 dedupe_tags: bool = False) -> ImageSource:
        images = cls.__new__(cls)
        images.store, images.max_regions, images.max_tags = store, max_regions, max_tags
        images.gt_tags, images.dedupe_tags = gt_tags, dedupe_tags
        return images

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.store

    def tags(self, image_id: str, image: dict | None = None) -> list[str]:
        """Every tag of an image, in the order they are kept (``image``: its detections, if read)."""
        if self.gt_tags is not None:
            if image_id not in self.gt_tags.labels:
                raise FormatError(f"{self.gt_tags.source}: no ground-truth tags for image {image_id}", "no tags")
            names = self.gt_tags.labels[image_id]
        else:
            image = image or self.store.detections(image_id)
            # the most confident first (a stable sort keeps ties in detector order)
            names = [image["classes"][i] for i in np.argsort(-image["confs"], kind="stable")]
        return list(dict.fromkeys(names)) if self.dedupe_tags else list(names)

    def __call__(self, image_id: str) -> dict:
        image = self.store[image_id]
        n = self.max_regions
        return {
            "region_feats": image["region_feats"][:n],
            "boxes": image["boxes"][:n],
            "tags": self.tags(image_id, image)[: self.max_tags],
            "width": image["width"],
            "height": image["height"],
        }


def load_phrase_indices(
    records: list[CaptionRecord], cache_path: str, vocab: PhraseVocab, max_phrases: int,
    skip: SkippedSamples | None = None,
) -> tuple[list[CaptionRecord], list[list[int]]]:
    """The records that have phrases in the cache, and their phrase ids. A caption missing
    from the cache is an error, or with ``skip`` a skipped sample."""
    cache = read_phrase_cache(cache_path, skip)
    missing = [r for r in records if phrase_key(r) not in cache]
    if missing and skip is None:
        r = missing[0]
        raise FormatError(
            f"{cache_path}: no phrases for {len(missing)} captions (first: image {r.image_id}, sentence {r.sent_id}); "
            "run `mvptr prepare phrases` on these captions", "no phrases"
        )
    for r in missing:
        skip.add(FormatError(f"{cache_path}: no phrases for image {r.image_id}, sentence {r.sent_id}", "no phrases"))
    records = [r for r in records if phrase_key(r) in cache]
    return records, [vocab.encode(cache[phrase_key(r)], max_phrases) for r in records]


class PairDataset(Dataset):
    """(caption, image) pairs of one split; text is tokenised once up front."""

    def __init__(
        self,
        records: list[CaptionRecord],
        images: ImageSource,
        token_ids: list[list[int]],
        phrase_ids: list[list[int]],
    ):
        missing = [r.image_id for r in records if r.image_id not in images]
        if missing:
            raise FormatError(f"{len(missing)} captioned images have no region features (first: {missing[0]})",
                              "image not found")
        self.records, self.images = records, images
        self.token_ids, self.phrase_ids = token_ids, phrase_ids
        ids = sorted({r.image_id for r in records})
        self.image_index = {image_id: i for i, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {
            "image_id": r.image_id,
            "image_index": self.image_index[r.image_id],
            "input_ids": self.token_ids[i],
            "phrases": self.phrase_ids[i],
            **self.images(r.image_id),
        }


def corpora(data: DataConfig) -> list[CorpusConfig]:
    """``data.corpora``, or one unnamed corpus of the single-corpus fields when it is empty."""
    if not data.corpora:
        return [CorpusConfig("", data.captions, data.features, data.predictions, data.phrase_cache, data.tags)]
    if data.tags:
        raise ConfigError("data.tags is for a single corpus; with data.corpora give each corpus its own tags")
    names = [c.name for c in data.corpora]
    for c in data.corpora:
        if not c.name or "/" in c.name or names.count(c.name) > 1:
            raise ValueError(f"data.corpora: expected distinct non-empty names without '/', got {names}")
        if not (c.captions and c.features and c.phrase_cache):
            raise ValueError(f"data.corpora: corpus {c.name!r} needs captions, features and phrase_cache")
    return list(data.corpora)


def ground_truth_tags(parts: list[CorpusConfig]) -> GroundTruthTags | None:
    """The tag files of the corpora (``data.tags`` or each corpus's ``tags``), image ids
    qualified as in :func:`open_images`; None when none has one. Either every corpus has
    ground-truth tags or none: a mix would give some images detector tags silently."""
    files = [c.tags for c in parts if c.tags]
    if not files:
        return None
    if len(files) != len(parts):
        raise ConfigError("data.corpora: give every corpus its tags file, or none")
    labels = {f"{c.name}/{k}" if c.name else k: v for c in parts for k, v in read_tag_file(c.tags).items()}
    return GroundTruthTags(labels, ", ".join(files))


def open_images(data: DataConfig, region_feat_dim: int, skip: SkippedSamples | None = None) -> ImageSource:
    """The region store of each corpus; with several corpora, image ids are "<corpus>/<image id>"."""
    parts = corpora(data)
    tags = ground_truth_tags(parts)
    if not data.corpora:
        return ImageSource(data.features, data.predictions, region_feat_dim, data.max_regions, data.max_tags, skip,
                           tags, data.dedupe_tags)
    stores = {c.name: open_store(c.features, c.predictions, region_feat_dim, skip) for c in parts}
    return ImageSource.of_store(CorpusStores(stores), data.max_regions, data.max_tags, tags, data.dedupe_tags)


def caption_ids(data: DataConfig) -> ImageIds:
    """How the captions' image ids become the features' (data.image_id_pattern, data.image_id_map)."""
    return ImageIds(data.image_id_pattern, data.image_id_map or None)


def data_captions(data: DataConfig, splits=None, skip: SkippedSamples | None = None) -> list[CaptionRecord]:
    """The captions of ``data.captions`` (of ``splits``), image ids as the features know them."""
    return read_captions(data.captions, splits, skip, caption_ids(data))


def _qualified(name: str, records: list[CaptionRecord]) -> list[CaptionRecord]:
    return [replace(r, image_id=f"{name}/{r.image_id}") for r in records] if name else records


def caption_records(data: DataConfig, split: str, skip: SkippedSamples | None = None) -> list[CaptionRecord]:
    """The captions of ``split`` in every corpus, image ids qualified as in :func:`open_images`."""
    ids = caption_ids(data)
    return [r for c in corpora(data) for r in _qualified(c.name, read_captions(c.captions, [split], skip, ids))]


def _check_images(records: list[CaptionRecord], images: ImageSource, where: str,
                  skip: SkippedSamples | None) -> list[CaptionRecord]:
    """Drop the captions of images with no features; with ``skip``, read every image once and
    also drop those whose features, detections or ground-truth tags are bad."""
    per_image: dict[str, int] = {}
    for r in records:
        per_image[r.image_id] = per_image.get(r.image_id, 0) + 1
    bad = set()
    for image_id, n in per_image.items():
        try:
            if image_id not in images:
                raise FormatError(f"{where}: image {image_id} is captioned but has no region features",
                                  "image not found")
            if skip is not None:
                images(image_id)
            elif images.gt_tags is not None:
                images.tags(image_id)  # an image without ground-truth tags is found before training
        except FormatError as err:
            skip_or_raise(skip, err, samples=n)
            bad.add(image_id)
    return [r for r in records if r.image_id not in bad]


def build_pair_dataset(
    data: DataConfig, pieces: WordPieces, vocab: PhraseVocab, region_feat_dim: int, split: str, max_images: int = 0,
    skip: SkippedSamples | None = None,
) -> PairDataset:
    """The (caption, image) pairs of ``split`` over every corpus (see :func:`corpora`).

    Without ``skip`` the first bad sample raises :class:`FormatError`. With it, bad captions,
    phrase records and images are left out and recorded there; every image is then read once
    up front, so nothing bad is met during training. ``corpus_counts`` holds the captions
    and images of each corpus.
    """
    images = open_images(data, region_feat_dim, skip)
    parts = corpora(data)
    ids = caption_ids(data)
    per_corpus = [(c, _qualified(c.name, read_captions(c.captions, [split], skip, ids))) for c in parts]
    if not any(recs for _, recs in per_corpus):
        raise ValueError(f"{', '.join(c.captions for c in parts)}: no captions in split {split!r}")
    if max_images:
        keep = set(sorted({r.image_id for _, recs in per_corpus for r in recs})[:max_images])
        per_corpus = [(c, [r for r in recs if r.image_id in keep]) for c, recs in per_corpus]
    records, phrases, counts = [], [], {}
    for c, recs in per_corpus:
        recs = _check_images(recs, images, c.features, skip)
        # the phrase cache is keyed by the corpus's own image ids
        prefix = len(c.name) + 1 if c.name else 0
        own = [replace(r, image_id=r.image_id[prefix:]) for r in recs]
        own, ids = load_phrase_indices(own, c.phrase_cache, vocab, data.max_phrases, skip)
        recs = _qualified(c.name, own)
        records += recs
        phrases += ids
        counts[c.name or "data"] = {"captions": len(recs), "images": len({r.image_id for r in recs})}
    if not records:
        raise ValueError(f"no usable captions in split {split!r}: every sample was skipped")
    tokens = pieces.captions([r.caption for r in records])
    dataset = PairDataset(records, images, tokens, phrases)
    dataset.corpus_counts = counts
    return dataset


def mix_phrase_vocab(data: DataConfig, min_count: int,
                     skip: SkippedSamples | None = None) -> tuple[PhraseVocab, int]:
    """The phrase vocabulary of the training captions of every corpus (see :func:`corpora`), from
    their phrase caches; returns it with the number of captions counted."""
    lists = []
    for c in corpora(data):
        cache = read_phrase_cache(c.phrase_cache, skip)
        for r in read_captions(c.captions, [data.train_split], skip, caption_ids(data)):
            if phrase_key(r) in cache:
                lists.append(cache[phrase_key(r)])
                continue
            err = FormatError(f"{c.phrase_cache}: no phrases for image {r.image_id}, sentence {r.sent_id}; "
                              "run `mvptr prepare phrases` on these captions", "no phrases")
            skip_or_raise(skip, err)
    return PhraseVocab.build(lists, min_count=min_count), len(lists)


def tag_vocab_from(images: ImageSource, image_ids, skip_bad: bool = False) -> list[str]:
    """All tag classes of the given images (predicted, or their ground-truth labels), sorted.
    With ``skip_bad``, images with missing or bad detections or tags are passed over (the
    dataset build counts them)."""
    names: set[str] = set()
    for image_id in image_ids:
        try:
            names.update(images.tags(image_id))
        except FormatError:
            if not skip_bad:
                raise
    return sorted(names)


def bert_mask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    prob: float,
    mask_value: int,
    random_low: int,
    random_high: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select candidates with ``prob``; of those 80% -> mask_value, 10% -> random id, 10% kept.

    Returns (masked ids, labels) with labels = original id at selected positions, else IGNORE.
    """
    u = torch.rand(ids.shape, generator=generator)
    selected = candidates & (u < prob)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    v = torch.rand(ids.shape, generator=generator)
    out = ids.clone()
    out[selected & (v < 0.8)] = mask_value
    rand = selected & (v >= 0.8) & (v < 0.9)
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

    @classmethod
    def for_objectives(cls, obj: ObjectiveConfig, objectives: list[str]) -> "Masking":
        """The masking of a stage's objectives that are switched on: an objective that is off
        (in the stage's list or by its ``objectives.<name>`` switch) corrupts no input."""
        on = {o for o in objectives if getattr(obj, o)}
        return cls(
            words=obj.mlm_mask_prob if "mlm" in on else 0.0,
            phrases=obj.phrase_mask_prob if "mcr_s" in on and obj.use_phrases else 0.0,
            tags=obj.tag_mask_prob if "mcr_v" in on and obj.use_tags else 0.0,
            tie_phrases=obj.phrase_mask_tied and "mcr_s" in on,
        )


class Collator:
    """Pads a list of samples into tensors and applies the masking of the active objectives.

    Words masked for MLM go to ``mlm_input_ids`` (``separate_mlm``, the default) or replace
    ``input_ids`` (one shared masked pass, the official code's choice). In the pass MLM reads,
    every phrase that contains a masked word is [MASK] too (``mlm_phrase_ids``, or
    ``phrase_ids`` when the pass is shared), so that no phrase row gives the word away;
    ``phrase_pieces`` (the word pieces of each phrase of the vocabulary) says which phrase
    contains which word, and without it every phrase is masked in that pass.
    ``phrase_masked`` marks the phrases whose row in ``phrase_ids`` is not their own.

    Concept mode: each tag is one unit (a tag class, embedded as the mean of its pieces) and
    MCR^v labels are tag-class indices. Word-piece mode: each piece of each tag is a unit
    and labels are word ids (the official code's reading).
    """

    def __init__(
        self,
        pieces: WordPieces,
        tag_vocab: list[str],
        num_phrases: int,
        vocab_size: int,
        tag_mode: str = "concepts",
        use_phrases: bool = True,
        use_tags: bool = True,
        masking: Masking | None = None,
        generator: torch.Generator | None = None,
        separate_mlm: bool = True,
        phrase_pieces: list[list[int]] | None = None,
    ):
        if tag_mode not in ("concepts", "word_pieces"):
            raise ValueError(f"unknown tag_mode {tag_mode!r} (expected 'concepts' or 'word_pieces')")
        self.pieces, self.tag_vocab, self.tag_mode = pieces, tag_vocab, tag_mode
        self.tag_index = {name: i for i, name in enumerate(tag_vocab)}
        self.num_phrases, self.vocab_size = num_phrases, vocab_size
        self.use_phrases, self.use_tags = use_phrases, use_tags
        self.masking = masking or Masking()
        self.generator = generator
        self.separate_mlm = separate_mlm
        self.phrase_pieces = None if phrase_pieces is None else pad_lists([list(p) for p in phrase_pieces], PAD_ID)
        # rows 0..T-1: vocabulary tags; row T: [MASK]; unknown tags are appended per batch
        self.tag_table = [self.pieces.pieces(name) for name in tag_vocab] + [(MASK_ID,)]

    def _tags(self, batch_tags: list[list[str]]) -> dict:
        if self.tag_mode == "word_pieces":
            units = [[p for name in tags for p in self.pieces.pieces(name)] for tags in batch_tags]
            ids = pad_lists(units, PAD_ID)
            present = ids != PAD_ID
            ids, labels = bert_mask(
                ids, present, self.masking.tags, MASK_ID, FIRST_WORD_ID, self.vocab_size, self.generator
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
            idx, known, self.masking.tags, len(self.tag_vocab), 0, len(self.tag_vocab), self.generator
        )
        piece_table = pad_lists([list(t) for t in table], PAD_ID)
        pieces = piece_table[idx_masked.clamp(min=0)]
        pieces[~present] = PAD_ID
        return {"tag_pieces": pieces, "tag_mask": present, "tag_labels": labels}

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
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
            input_ids, word_mask & ~special, self.masking.words, MASK_ID, FIRST_WORD_ID, self.vocab_size, self.generator
        )
        # with a separate MLM pass the other objectives keep every word
        words = ({"input_ids": input_ids, "mlm_input_ids": masked_ids} if self.separate_mlm
                 else {"input_ids": masked_ids})
        phrases = pad_lists([it["phrases"] if self.use_phrases else [] for it in items], -1)
        phrase_mask = phrases >= 0
        phrases_masked, phrase_labels = bert_mask(
            phrases, phrase_mask, self.masking.phrases, -2, 0, self.num_phrases, self.generator
        )
        # phrase rows sit after the word rows of the shared table; -2 marks [MASK]
        phrase_ids = torch.where(phrases_masked == -2, torch.tensor(MASK_ID), phrases_masked + self.vocab_size)
        phrase_ids[~phrase_mask] = PAD_ID
        leaks = self._leaking_phrases(input_ids, mlm_labels != IGNORE, phrases) & phrase_mask
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

    def _leaking_phrases(self, input_ids: torch.Tensor, masked_words: torch.Tensor,
                         phrases: torch.Tensor) -> torch.Tensor:
        """(B, M): the phrases that contain a word piece masked for MLM (matched by piece id);
        all of them when the phrases' pieces are unknown."""
        if not masked_words.any():
            return torch.zeros_like(phrases, dtype=torch.bool)
        if self.phrase_pieces is None:
            return torch.ones_like(phrases, dtype=torch.bool)
        pieces = self.phrase_pieces[phrases.clamp(min=0)]  # (B, M, P)
        words = input_ids.masked_fill(~masked_words, -1)  # (B, N), -1 matches no piece
        hit = (pieces[:, :, :, None] == words[:, None, None, :]) & (pieces != PAD_ID)[..., None]
        return hit.flatten(2).any(-1)

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
