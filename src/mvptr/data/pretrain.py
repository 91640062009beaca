"""Image-caption pairs as MVPTR's multi-level input.

A sample is a caption (word pieces + phrase concepts) and its image (region features +
tags). The images come from one or several corpora (``data.corpora``), their tags from the
detector or from ground-truth tag files. Batching and masking are :mod:`.collate`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from torch.utils.data import Dataset

from ..core.config import CorpusConfig, DataConfig
from ..core.errors import ConfigError, FormatError, SkippedSamples, skip_or_raise
from ..formats.captions import CaptionRecord, ImageIds, read_captions
from ..formats.phrase_cache import Span, phrase_key, read_phrase_cache
from ..formats.tags import read_tag_file
from ..text.phrases import PhraseVocab
from ..text.tokenizer import WordPieces, piece_positions
from ..vision.stores import CorpusStores, open_store
from .batch_groups import batch_units, load_batch_groups


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
                 skip: SkippedSamples | None = None, *, gt_tags: GroundTruthTags | None = None,
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
) -> tuple[list[CaptionRecord], list[list[int]], list[list[list[Span]]]]:
    """The records that have phrases in the cache, their phrase ids and the character spans of
    each id's words. A caption missing from the cache is an error, or with ``skip`` a skipped sample."""
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
    encoded = [vocab.encode_parsed(cache[phrase_key(r)], max_phrases) for r in records]
    return records, [ids for ids, _ in encoded], [spans for _, spans in encoded]


class PairDataset(Dataset):
    """(caption, image) pairs of one split; text is tokenised once up front. ``phrase_positions``:
    for each phrase id of a caption, the positions of the word pieces it was parsed from (the
    collator hides a phrase from MLM when one of them is masked)."""

    def __init__(
        self,
        records: list[CaptionRecord],
        images: ImageSource,
        token_ids: list[list[int]],
        phrase_ids: list[list[int]],
        phrase_positions: list[list[list[int]]] | None = None,
    ):
        missing = [r.image_id for r in records if r.image_id not in images]
        if missing:
            raise FormatError(f"{len(missing)} captioned images have no region features (first: {missing[0]})",
                              "image not found")
        self.records, self.images = records, images
        self.token_ids, self.phrase_ids, self.phrase_positions = token_ids, phrase_ids, phrase_positions
        ids = sorted({r.image_id for r in records})
        self.image_index = {image_id: i for i, image_id in enumerate(ids)}

    # the sampler's units (see ``data.batch_groups``); None: every sample is a unit of its own
    units: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, i: int) -> str:
        """Sample ``i`` by its ids, for messages."""
        return f"image {self.records[i].image_id}, caption {self.records[i].sent_id}"

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {
            "image_id": r.image_id,
            "image_index": self.image_index[r.image_id],
            "input_ids": self.token_ids[i],
            "phrases": self.phrase_ids[i],
            **({} if self.phrase_positions is None else {"phrase_positions": self.phrase_positions[i]}),
            **self.images(r.image_id),
        }


def required_path(data: DataConfig, key: str) -> str:
    """``data.<key>``; unset ("": no preset named it) is an error saying how to name it."""
    path = getattr(data, key)
    if not path:
        raise ConfigError(f"data.{key} is not set: choose a preset that names the data files (--config demo), "
                          f"or set data.root=DIR with a preset's layout, or data.{key}=PATH")
    return path


def corpora(data: DataConfig, needs: tuple[str, ...] = ("captions", "features", "phrase_cache")) -> list[CorpusConfig]:
    """``data.corpora``, or one unnamed corpus of the single-corpus fields when it is empty (each
    of ``needs`` set)."""
    if not data.corpora:
        for key in needs:
            required_path(data, key)
        return [CorpusConfig("", data.captions, data.features, data.predictions, data.phrase_cache, data.tags)]
    if data.tags:
        raise ConfigError("data.tags is for a single corpus; with data.corpora give each corpus its own tags")
    names = [c.name for c in data.corpora]
    for c in data.corpora:
        if not c.name or "/" in c.name or names.count(c.name) > 1:
            raise ConfigError(f"data.corpora: expected distinct non-empty names without '/', got {names}")
        if not (c.captions and c.features and c.phrase_cache):
            raise ConfigError(f"data.corpora: corpus {c.name!r} needs captions, features and phrase_cache")
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
    parts = corpora(data, needs=("features",))
    tags = ground_truth_tags(parts)
    if not data.corpora:
        return ImageSource(data.features, data.predictions, region_feat_dim, data.max_regions, data.max_tags, skip,
                           gt_tags=tags, dedupe_tags=data.dedupe_tags)
    stores = {c.name: open_store(c.features, c.predictions, region_feat_dim, skip) for c in parts}
    return ImageSource.of_store(CorpusStores(stores), data.max_regions, data.max_tags, tags, data.dedupe_tags)


def caption_ids(data: DataConfig) -> ImageIds:
    """How the captions' image ids become the features' (data.image_id_pattern, data.image_id_map)."""
    return ImageIds(data.image_id_pattern, data.image_id_map or None)


def data_captions(data: DataConfig, splits=None, skip: SkippedSamples | None = None) -> list[CaptionRecord]:
    """The captions of ``data.captions`` (of ``splits``), image ids as the features know them."""
    return read_captions(required_path(data, "captions"), splits, skip, caption_ids(data))


def _qualified(name: str, records: list[CaptionRecord]) -> list[CaptionRecord]:
    return [replace(r, image_id=f"{name}/{r.image_id}") for r in records] if name else records


def caption_records(data: DataConfig, split: str, skip: SkippedSamples | None = None) -> list[CaptionRecord]:
    """The captions of ``split`` in every corpus, image ids qualified as in :func:`open_images`."""
    ids = caption_ids(data)
    parts = corpora(data, needs=("captions",))
    return [r for c in parts for r in _qualified(c.name, read_captions(c.captions, [split], skip, ids))]


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
    *, skip: SkippedSamples | None = None,
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
        raise FormatError(f"{', '.join(c.captions for c in parts)}: no captions in split {split!r}", "no captions")
    if max_images:
        keep = set(sorted({r.image_id for _, recs in per_corpus for r in recs})[:max_images])
        per_corpus = [(c, [r for r in recs if r.image_id in keep]) for c, recs in per_corpus]
    records, phrases, spans, counts = [], [], [], {}
    for c, recs in per_corpus:
        recs = _check_images(recs, images, c.features, skip)
        # the phrase cache is keyed by the corpus's own image ids
        prefix = len(c.name) + 1 if c.name else 0
        own = [replace(r, image_id=r.image_id[prefix:]) for r in recs]
        own, ids, where = load_phrase_indices(own, c.phrase_cache, vocab, data.max_phrases, skip)
        recs = _qualified(c.name, own)
        records += recs
        phrases += ids
        spans += where
        counts[c.name or "data"] = {"captions": len(recs), "images": len({r.image_id for r in recs})}
    if not records:
        raise FormatError(f"no usable captions in split {split!r}: every sample was skipped", "no captions")
    tokens, offsets = pieces.captions_with_offsets([r.caption for r in records])
    positions = [piece_positions(o, s) for o, s in zip(offsets, spans)]
    dataset = PairDataset(records, images, tokens, phrases, positions)
    dataset.corpus_counts = counts
    if data.batch_groups:
        dataset.units = batch_units(records, load_batch_groups(data.batch_groups))
    return dataset


def mix_phrase_vocab(data: DataConfig, min_count: int,
                     skip: SkippedSamples | None = None) -> tuple[PhraseVocab, int]:
    """The phrase vocabulary of the training captions of every corpus (see :func:`corpora`), from
    their phrase caches; returns it with the number of captions counted."""
    lists = []
    for c in corpora(data, needs=("captions", "phrase_cache")):
        cache = read_phrase_cache(c.phrase_cache, skip)
        for r in read_captions(c.captions, [data.train_split], skip, caption_ids(data)):
            if phrase_key(r) in cache:
                lists.append(cache[phrase_key(r)].tuples)
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


