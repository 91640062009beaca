"""Evaluate a model on a set of compositional probes (``mvptr.eval.probes``): encode the probes'
captions (their phrase concepts parsed as training's were) and images once, then score every
probe with ITM and with the cosine of the global embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from ..checkpoint.model_dir import Bundle
from ..core.config import Config
from ..core.errors import ConfigError, FormatError
from ..data.builders import collator
from ..eval.probes import TIE_RULE, ProbeSet, model_scorers, score_probes
from ..eval.retrieval import EncodedSet, encode_images, encode_texts
from ..text.phrases import PhraseExtractor
from ..text.tokenizer import WordPieces


def caption_phrases(cfg: Config, captions: Sequence[str], progress: bool = False) -> list[list[tuple[str, ...]]]:
    """Scene-graph tuples of each caption, parsed as ``mvptr prepare phrases`` parses the
    training captions (none when ``objectives.use_phrases`` is off: the model reads none)."""
    if not cfg.objectives.use_phrases or not captions:
        return [[] for _ in captions]
    return [p.tuples for p in PhraseExtractor().extract(list(captions), progress=progress)]


@torch.no_grad()
def encode_probe_set(cfg: Config, bundle: Bundle, probes: ProbeSet,
                     phrases: Sequence[Sequence[Sequence[str]]] | None = None) -> tuple[EncodedSet, EncodedSet]:
    """The uni-modal outputs of the probes' captions and images (``phrases``: each caption's
    tuples, parsed when not given)."""
    tuples = caption_phrases(cfg, probes.captions) if phrases is None else phrases
    if len(tuples) != len(probes.captions):
        raise ConfigError(f"{len(probes.captions)} probe captions but {len(tuples)} phrase lists")
    pieces = WordPieces(bundle.tokenizer, cfg.data.max_tokens)
    vocab, m = bundle.phrase_vocab, cfg.data.max_phrases
    items = [{"input_ids": ids, "phrases": vocab.encode(t, m)} for ids, t in zip(pieces.captions(probes.captions),
                                                                                   tuples)]
    collate = collator(cfg, bundle)
    loader = lambda rows: DataLoader(rows, batch_size=cfg.eval.batch_size, collate_fn=collate)  # noqa: E731
    model = bundle.model.eval()
    return encode_texts(model, loader(items), cfg.device), encode_images(model, loader(probes.images), cfg.device)


@torch.no_grad()
def evaluate_probes(cfg: Config, bundle: Bundle, probes: ProbeSet,
                    phrases: Sequence[Sequence[Sequence[str]]] | None = None) -> dict:
    """{"itm": {kind: result}, "cosine": {kind: result}, "counts", "tie_rule"} of every probe
    (``mvptr.eval.probes.score_probes``); the merged-attention model is scored by ITM only."""
    if not probes.captions or not probes.images:
        raise FormatError(f"no probes to score ({len(probes.captions)} captions, {len(probes.images)} images)")
    texts, images = encode_probe_set(cfg, bundle, probes, phrases)
    scorers = model_scorers(bundle.model, texts, images, cfg.eval.batch_size, cfg.eval.precision)
    out = {name: score_probes(fn, probes, name) for name, fn in scorers.items()}
    return {**out, "counts": probes.counts(), "tie_rule": TIE_RULE}
