"""Zero-shot evaluation of a pre-trained model: retrieval (uni-modal and re-ranked) and phrase
grounding on ``eval.split``."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..checkpoint.model_dir import Bundle
from ..core.config import Config
from ..core.errors import SkippedSamples
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


@torch.no_grad()
def evaluate(cfg: Config, bundle: Bundle, progress: bool = True, skipped: SkippedSamples | None = None) -> dict:
    """Zero-shot retrieval (uni-modal and re-ranked) and phrase grounding on ``cfg.eval.split``.

    It reads the single-corpus fields of ``cfg.data`` (``data.corpora`` is for pre-training).
    With ``cfg.data.skip_bad``, bad samples go to ``skipped`` instead of raising.
    """
    model = bundle.model.eval()
    e = cfg.eval
    skip = (skipped if skipped is not None else SkippedSamples()) if cfg.data.skip_bad else None
    dataset = eval_dataset(cfg, bundle, skip)
    collate = collator(cfg, bundle)
    retrieval, image_ids = rank_dataset(cfg, model, dataset, collate, progress)
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
    return itm_separation(model, texts, images, text_image, hard_k, cfg.eval.batch_size, cfg.eval.precision, cfg.seed,
                          first_caption_of_each_image(text_image))
