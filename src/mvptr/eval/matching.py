"""How well the ITM head tells a caption's own image from others.

Re-ranking only helps when ITM scores a matched pair above the candidates the uni-modal
ranking confuses it with, so two areas under the ROC curve are measured over test pairs:
each caption with its own image against a uniformly random other image ("random"), and
against the ``hard_k`` other images the uni-modal similarity ranks highest for it ("hard").
A model that scores every pair alike gets exactly 0.5 on both.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from ..core.errors import ConfigError, FormatError, NotFiniteError
from .retrieval import EncodedSet, check_finite_scores, itm_scores


def auc(positive, negative) -> float:
    """Probability that a random positive scores above a random negative, ties counting half
    (the Mann-Whitney statistic). Empty sets and NaN scores are errors."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise FormatError(f"AUC needs positive and negative scores (got {pos.size} and {neg.size})")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise NotFiniteError("AUC of NaN scores: the model produced NaN")
    ranks = rankdata(np.concatenate([pos, neg]))  # ties share their mean rank
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def negative_images(sim: torch.Tensor, text_image: torch.Tensor, hard_k: int, seed: int = 0):
    """For each caption (column of ``sim``, images x captions): one uniformly random other
    image, and its ``hard_k`` most similar other images. Returns (random (N_t,), hard (N_t, k))."""
    n_images = sim.shape[0]
    if n_images < 2:
        raise FormatError(f"ITM separation needs at least 2 images, got {n_images}")
    k = min(hard_k, n_images - 1)
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, n_images, (len(text_image),), generator=g)  # any image but the caption's own
    random = (text_image + shift) % n_images
    own = torch.nn.functional.one_hot(text_image, n_images).bool()
    hard = sim.t().masked_fill(own, float("-inf")).topk(k, dim=1).indices
    return random, hard


def first_caption_of_each_image(text_image: torch.Tensor) -> torch.Tensor:
    """Indices of the first caption of every image (``text_image``: each caption's image)."""
    first = torch.full((int(text_image.max()) + 1,), len(text_image), dtype=torch.long)
    first.scatter_reduce_(0, text_image, torch.arange(len(text_image)), reduce="amin")
    return first[first < len(text_image)]


def itm_separation(model, texts: EncodedSet, images: EncodedSet, text_image: torch.Tensor, hard_k: int = 10,
                   batch_size: int = 128, *, precision: str = "fp32", seed: int = 0,
                   captions: torch.Tensor | None = None) -> dict:
    """{"auc_random", "auc_hard", "captions", "hard_k"}: ITM log-odds of each caption with its
    own image against its random and its hard negative images (``text_image``: each caption's
    image index; ``captions``: the captions to score, default all)."""
    if texts.emb is None:
        raise ConfigError("ITM separation needs the uni-modal similarity to find hard negatives; "
                          "the merged-attention model has none")
    sim = (images.emb @ texts.emb.t()).float().cpu()
    check_finite_scores(sim, "uni-modal similarity (rows: images, columns: captions)")
    captions = torch.arange(len(text_image)) if captions is None else captions
    random, hard = negative_images(sim[:, captions], text_image[captions], hard_k, seed)
    image_idx = torch.cat([text_image[captions], random, hard.flatten()])
    text_idx = torch.cat([captions, captions, captions.repeat_interleave(hard.shape[1])])
    scores = itm_scores(model, texts, images, torch.stack([image_idx, text_idx], 1), batch_size, False,
                        precision=precision)
    n = len(captions)
    pos, rand, hardest = scores[:n], scores[n : 2 * n], scores[2 * n :]
    return {"auc_random": round(auc(pos, rand), 4), "auc_hard": round(auc(pos, hardest), 4),
            "captions": n, "hard_k": int(hard.shape[1])}
