"""The data checks of ``mvptr doctor``: each corpus's captions, feature store, tags and phrase
cache, read by the readers the run itself uses, and whether they cover each other.

A check returns a :class:`Check` ("ok" or "warn"); a problem that would stop the run raises the
:class:`~mvptr.core.errors.MvptrError` the run would raise (or says how many samples it meets),
naming the file and what to do."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..core.config import CorpusConfig, DataConfig
from ..core.errors import FormatError, SkippedSamples
from ..data.pretrain import caption_ids
from ..formats.captions import CaptionRecord, read_captions
from ..formats.phrase_cache import phrase_key, read_phrase_cache
from ..formats.tags import read_tag_file
from ..text.phrases import PhraseVocab
from ..vision.stores import MemmapStore, open_store

SAMPLED = 3  # feature records read in full: the first, middle and last captioned image


@dataclass
class Check:
    """One line of the report: its status, what was checked and what was found."""

    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<16}  {self.detail}"


def _named(corpus: CorpusConfig, what: str) -> str:
    return f"{corpus.name}: {what}" if corpus.name else what


def _skip(data: DataConfig) -> SkippedSamples | None:
    return SkippedSamples() if data.skip_bad else None


def _skipped_note(skip: SkippedSamples | None) -> str:
    return f"; {skip.summary()['skipped_samples']} bad samples left out (data.skip_bad)" if skip else ""


def check_captions(data: DataConfig, corpus: CorpusConfig) -> tuple[Check, list[CaptionRecord]]:
    """Every caption of the file (all splits): parsed, counted by split; the training split must hold some."""
    skip = _skip(data)
    records = read_captions(corpus.captions, None, skip, caption_ids(data))
    splits = Counter(r.split for r in records)
    train = [r for r in records if r.split in data.train_split.split("+")]
    if not train:
        raise FormatError(f"{corpus.captions}: no captions in the training split {data.train_split!r} (splits: "
                          f"{', '.join(sorted(splits)) or 'none'}); set data.train_split or fix the file",
                          "no captions")
    per_split = ", ".join(f"{s} {n}" for s, n in sorted(splits.items()))
    images = len({r.image_id for r in records})
    status = "warn" if skip else "ok"
    return Check(status, _named(corpus, "captions"), f"{corpus.captions}: {len(records)} captions of {images} "
                 f"images ({per_split}){_skipped_note(skip)}"), records


def _sample(ids: list[str]) -> list[str]:
    """The first, middle and last of ``ids`` (fewer when there are fewer)."""
    picks = [ids[0], ids[len(ids) // 2], ids[-1]] if ids else []
    return list(dict.fromkeys(picks))[:SAMPLED]


def check_features(data: DataConfig, corpus: CorpusConfig, feat_dim: int, records: list[CaptionRecord]):
    """The store opens (its index is read whole) and a few captioned images' records decode; returns
    the check, the store and the captioned image ids it lacks."""
    store = open_store(corpus.features, corpus.predictions, feat_dim, _skip(data))
    captioned = sorted({r.image_id for r in records})
    present = [i for i in captioned if i in store]
    missing = [i for i in captioned if i not in store]
    sampled = _sample(present)
    for image_id in sampled:
        store[image_id]  # features, detections and their agreement, as the run reads them
    if isinstance(store, MemmapStore):
        kind = f"memmap store, {len(store)} images, {store.num_regions} regions"
        where = corpus.features
    else:
        kind = f"VinVL TSV pair, {len(store)} images"
        where = f"{corpus.features} + {corpus.predictions}"
    read = f"index checked, {len(sampled)} records read in full (images {', '.join(sampled)})" if sampled \
        else "index checked, no captioned image to read"
    return Check("ok", _named(corpus, "features"), f"{where}: {kind}; {read}"), store, missing


def check_coverage(data: DataConfig, corpus: CorpusConfig, records: list[CaptionRecord], missing: list[str]) -> Check:
    """Every captioned image has region features; the run stops at the first that has none
    (``data.skip_bad``: leaves its captions out)."""
    captioned = len({r.image_id for r in records})
    if not missing:
        return Check("ok", _named(corpus, "image coverage"), f"all {captioned} captioned images have region features")
    lost = sum(1 for r in records if r.image_id in set(missing))
    text = (f"{corpus.features}: {len(missing)} of {captioned} captioned images have no region features "
            f"(first: {missing[0]}; {lost} captions)")
    if data.skip_bad:
        return Check("warn", _named(corpus, "image coverage"), f"{text}; data.skip_bad leaves them out")
    raise FormatError(f"{text}; extract their features, or fix the image ids (data.image_id_pattern, "
                      "data.image_id_map)", "image not found")


def check_tags(data: DataConfig, corpus: CorpusConfig, records: list[CaptionRecord]) -> Check | None:
    """The ground-truth tags file (``data.tags`` / the corpus's ``tags``), if any, has every captioned image."""
    if not corpus.tags:
        return None
    labels = read_tag_file(corpus.tags)
    train = data.train_split.split("+")
    captioned = sorted({r.image_id for r in records if r.split in train})
    missing = [i for i in captioned if i not in labels]
    if missing and not data.skip_bad:
        raise FormatError(f"{corpus.tags}: no ground-truth tags for {len(missing)} of {len(captioned)} training "
                          f"images (first: {missing[0]}); add them, or leave data.tags unset for the detector's",
                          "no tags")
    status = "warn" if missing else "ok"
    lacking = f"; {len(missing)} training images have none (left out: data.skip_bad)" if missing else ""
    return Check(status, _named(corpus, "tags"), f"{corpus.tags}: tags of {len(labels)} images{lacking}")


def check_phrases(data: DataConfig, corpus: CorpusConfig, records: list[CaptionRecord]) -> Check:
    """The phrase cache holds every training caption (the run stops at one without; ``data.skip_bad``:
    leaves it out); captions of other splits without phrases are read with none."""
    skip = _skip(data)
    cache = read_phrase_cache(corpus.phrase_cache, skip)
    train = data.train_split.split("+")
    lacking = [r for r in records if r.split in train and phrase_key(r) not in cache]
    n_train = sum(1 for r in records if r.split in train)
    other = sum(1 for r in records if r.split not in train and phrase_key(r) not in cache)
    note = f"; {other} captions of other splits have none (read without phrases)" if other else ""
    if lacking and not data.skip_bad:
        r = lacking[0]
        raise FormatError(f"{corpus.phrase_cache}: no phrases for {len(lacking)} of {n_train} training captions "
                          f"(first: image {r.image_id}, sentence {r.sent_id}); run `mvptr prepare phrases` on "
                          f"{corpus.captions}", "no phrases")
    status = "warn" if lacking or other or skip else "ok"
    covered = f"{n_train - len(lacking)} of {n_train} training captions have phrases"
    return Check(status, _named(corpus, "phrase cache"),
                 f"{corpus.phrase_cache}: {len(cache)} records; {covered}{note}{_skipped_note(skip)}")


def check_phrase_vocab(data: DataConfig) -> tuple[Check, int]:
    vocab = PhraseVocab.load(data.phrase_vocab)
    return Check("ok", "phrase vocab", f"{data.phrase_vocab}: {len(vocab)} phrase concepts "
                 f"(min count {vocab.min_count})"), len(vocab)
