"""Zero-shot evaluation of a pre-trained model: retrieval (uni-modal and re-ranked) and phrase
grounding on ``eval.split``."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..checkpoint.model_dir import Bundle
from ..core.config import Config
from ..core.errors import ConfigError, SkippedSamples
from ..data.builders import collator, phrase_lookup
from ..data.grounding import grounding_examples
from ..data.pretrain import build_pair_dataset
from ..eval.grounding import evaluate_grounding
from ..eval.matching import first_caption_of_each_image, itm_separation
from ..eval.retrieval import chance_recall, encode_dataset, rank_dataset
from ..text.tokenizer import WordPieces


def eval_dataset(cfg: Config, bundle: Bundle, skip: SkippedSamples | None = None):
    """The pair dataset of ``cfg.eval.split`` (limited to ``eval.max_images``), read from the
    single-corpus fields of ``cfg.data`` (``data.corpora`` is for pre-training)."""
    pieces = WordPieces(bundle.tokenizer, cfg.data.max_tokens)
    return build_pair_dataset(replace(cfg.data, corpora=[]), pieces, bundle.phrase_vocab, cfg.model.region_feat_dim,
                              cfg.eval.split, cfg.eval.max_images, skip=skip)


def untrained_itm(bundle: Bundle) -> str | None:
    """Why the ITM head of ``bundle`` cannot re-rank (no objective that trained it was itm, as
    its config.json records), or None (it was trained, or the directory predates the record)."""
    if bundle.trained is None or "itm" in bundle.trained:
        return None
    return (f"the model's ITM head was never trained (it was trained with {', '.join(bundle.trained) or 'nothing'}, "
            "not itm), so re-ranked figures are left out and only uni-modal ones reported")


@torch.no_grad()
def evaluate(cfg: Config, bundle: Bundle, progress: bool = True, skipped: SkippedSamples | None = None) -> dict:
    """Zero-shot retrieval (uni-modal and re-ranked) and phrase grounding on ``cfg.eval.split``.

    It reads the single-corpus fields of ``cfg.data`` (``data.corpora`` is for pre-training).
    With ``cfg.data.skip_bad``, bad samples go to ``skipped`` instead of raising.
    """
    model = bundle.model.eval()
    note = untrained_itm(bundle)
    if note is not None:  # re-ranking by a head no objective trained would report noise
        if model.merged:
            raise ConfigError(f"{note}; the merged-attention model ranks by ITM alone, so there is nothing to "
                              "evaluate: evaluate a model pre-trained with the itm objective (stage 2)")
        cfg = replace(cfg, eval=replace(cfg.eval, k_c=0, k_i=0))
    e = cfg.eval
    skip = (skipped if skipped is not None else SkippedSamples()) if cfg.data.skip_bad else None
    dataset = eval_dataset(cfg, bundle, skip)
    collate = collator(cfg, bundle)
    retrieval, image_ids = rank_dataset(cfg, model, dataset, collate, progress)
    if note is not None:
        retrieval["rerank"] = f"not measured: {note}"
    examples = grounding_examples(e.entities_dir, image_ids, bundle.tokenizer, cfg.data.max_tokens,
                                  phrase_lookup(cfg, bundle.phrase_vocab, e.split, skip), skip=skip)
    chance = {"retrieval": chance_recall(len(image_ids), round(len(dataset) / len(image_ids)))}
    if examples:
        grounding = evaluate_grounding(model, examples, dataset.images, collate, e.batch_size, cfg.device)
        chance["grounding"] = grounding["chance"]
    else:  # a data set without Flickr30k Entities files has no grounding to measure
        grounding = {"skipped": f"{e.entities_dir}: no Flickr30k Entities sentences for the {e.split!r} images"}
    return {
        "retrieval": retrieval,
        "grounding": grounding,
        "chance": chance,
        "images": len(image_ids),
        "captions": len(dataset),
        **({"skipped": skip.summary()["skipped_samples"]} if skip is not None else {}),
    }


@torch.no_grad()
def itm_separation_on(cfg: Config, bundle: Bundle, hard_k: int = 10) -> dict:
    """ITM's AUC on ``cfg.eval.split``: the first caption of each image with its own image,
    against a random and against its ``hard_k`` most similar other images (``mvptr.eval.matching``)."""
    model = bundle.model.eval()
    texts, images, text_image, _ = encode_dataset(cfg, model, eval_dataset(cfg, bundle), collator(cfg, bundle))
    return itm_separation(model, texts, images, text_image, hard_k, cfg.eval.batch_size,
                          precision=cfg.eval.precision, seed=cfg.seed,
                          captions=first_caption_of_each_image(text_image))
