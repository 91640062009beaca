"""Image-text retrieval: uni-modal ranking, then ITM re-ranking of the top candidates.

Coarse step: cosine of the global embeddings for all pairs. Fine step: the multimodal
encoder scores the top ``k_c`` captions of every image and the top ``k_i`` images of every
caption; a pair wanted by both directions is scored once. Re-ranked candidates come first,
in re-ranked order; the rest keep their uni-modal order.

The merged-attention model has no uni-modal ranking: ITM scores every image-caption pair
(one pass of its whole encoder each), so a large test set needs a subset of its images.

Recall@K is the expectation over a random order among tied scores, so a model that scores
everything alike gets the chance recall, never 100; a NaN score is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core import distributed
from ..core.config import Config
from ..core.errors import ConfigError, FormatError, NotFiniteError
from ..core.precision import autocast
from ..model.modeling import MVPTR

KS = (1, 5, 10)
# pairs the merged model scores without being asked for a subset (eval.max_images): about a
# minute of CPU time at the demo size; a full 5k test set (25M pairs) is hours on a GPU
ALL_PAIRS_LIMIT = 100_000


def check_finite_scores(scores: torch.Tensor, where: str) -> None:
    """A NaN score is an error naming ``where`` and the first (row, column) that has one:
    a model that produces NaN must not be ranked at all."""
    nan = torch.isnan(scores)
    if nan.any():
        row, col = (int(i) for i in torch.nonzero(nan)[0])
        raise NotFiniteError(f"{where}: {int(nan.sum())} NaN scores (first at row {row}, column {col})")


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks=KS, where: str = "scores",
                first: torch.Tensor | None = None) -> dict[int, float]:
    """Percent of queries (rows) whose best-ranked positive is within the top K, in
    expectation over a uniformly random order among tied scores.

    scores (Q, C); positives (Q, C) bool; ``first`` (Q, C) bool, optional: candidates ranked
    above all others (the re-ranked ones), each group in the order of its scores. With g
    negatives ranked above the best positive, t negatives and p positives tied with it, a
    query is a hit at K with probability 1 - C(t, K - g) / C(t + p, K - g) (1 when K - g > t,
    0 when K <= g): constant scores give exactly the chance recall, and without ties this is
    the plain recall. NaN scores, a query without a positive, or no query at all are errors
    naming ``where``.
    """
    if scores.shape[0] == 0:
        raise FormatError(f"{where}: no queries to rank")
    check_finite_scores(scores, where)
    lonely = ~positives.any(1)
    if lonely.any():
        raise FormatError(f"{where}: query {int(torch.nonzero(lonely)[0])} has no positive candidate")
    negatives = ~positives
    if first is None:
        best = scores.masked_fill(negatives, float("-inf")).max(1, keepdim=True).values
        higher, tied = scores > best, scores == best
    else:  # the best positive by (tier, score): the top tier holding a positive, then its top score
        best_first = (first & positives).any(1, keepdim=True)
        same_tier = first == best_first
        best = scores.masked_fill(negatives | ~same_tier, float("-inf")).max(1, keepdim=True).values
        higher = (first & ~best_first) | (same_tier & (scores > best))
        tied = same_tier & (scores == best)
    above = (higher & negatives).sum(1).double()
    t = (tied & negatives).sum(1).double()
    p = (tied & positives).sum(1).double()
    out = {}
    for k in ks:
        j = k - above  # places left for the tie group within the top k
        # probability that the first j of the tie group are all negatives: prod_i (t - i) / (t + p - i)
        all_negative = torch.ones_like(t)
        for i in range(k):  # (t - i) reaches 0 before the denominator does: p >= 1
            ratio = (t - i).clamp(min=0) / (t + p - i).clamp(min=1)
            all_negative = torch.where(i < j, all_negative * ratio, all_negative)
        hit = torch.where(j > 0, 1.0 - all_negative, torch.zeros_like(t))
        out[k] = 100.0 * hit.mean().item()
    return out


def summarise(i2t: dict[int, float], t2i: dict[int, float]) -> dict[str, float]:
    out = {f"i2t_r{k}": round(v, 2) for k, v in i2t.items()}
    out.update({f"t2i_r{k}": round(v, 2) for k, v in t2i.items()})
    out["rsum"] = round(sum(i2t.values()) + sum(t2i.values()), 2)
    return out


def chance_recall(num_images: int, captions_per_image: int, ks=KS) -> dict[str, float]:
    """Expected recall of a random ranking (captions_per_image positives per image)."""
    n_text = num_images * captions_per_image
    # k at least the number of captions: every caption is among the k, the positives too
    i2t = {k: 100.0 * (1 - math.comb(n_text - captions_per_image, min(k, n_text)) / math.comb(n_text, min(k, n_text)))
           for k in ks}
    t2i = {k: 100.0 * min(k, num_images) / num_images for k in ks}
    return summarise(i2t, t2i)


@dataclass
class EncodedSet:
    """Cached uni-modal outputs: what the re-ranker needs, padded to one width. For the
    merged-attention model: the embedded inputs, the tags apart, and no global embeddings."""

    emb: torch.Tensor | None  # (N, E); None for the merged model
    hidden: torch.Tensor  # (N, L, H) text tokens+phrases, or regions
    mask: torch.Tensor  # (N, L) bool
    tag_hidden: torch.Tensor | None = None  # (N, K, H) embedded tags (merged model only)
    tag_mask: torch.Tensor | None = None

    def fused_with(self, model: MVPTR, texts: EncodedSet, v: torch.Tensor, t: torch.Tensor, **kwargs):
        """Texts ``t`` with these images ``v`` (index tensors) through the joint encoder."""
        tags = {} if self.tag_hidden is None else {"tag_hidden": self.tag_hidden[v], "tag_mask": self.tag_mask[v]}
        return model.fuse(texts.hidden[t], texts.mask[t], self.hidden[v], self.mask[v], **tags, **kwargs)


def _pad_cat(chunks: list[torch.Tensor], value) -> torch.Tensor:
    width = max(c.shape[1] for c in chunks)
    padded = [torch.nn.functional.pad(c, (0, 0) * (c.dim() - 2) + (0, width - c.shape[1]), value=value) for c in chunks]
    return torch.cat(padded)


@torch.no_grad()
def _encode_all(batches, device: str, encode) -> EncodedSet:
    """``encode(batch)`` -> (emb or None, hidden, mask, tag hidden or None, tag mask or None)."""
    parts = [encode({k: v.to(device) for k, v in b.items()}) for b in batches]
    emb, hidden, mask, tag_hidden, tag_mask = zip(*parts)
    return EncodedSet(
        None if emb[0] is None else torch.cat(emb), _pad_cat(hidden, 0.0), _pad_cat(mask, False),
        None if tag_hidden[0] is None else _pad_cat(tag_hidden, 0.0),
        None if tag_mask[0] is None else _pad_cat(tag_mask, False),
    )


def encode_texts(model: MVPTR, batches, device: str = "cpu") -> EncodedSet:
    """The textual encoder's outputs (merged model: the embedded texts)."""
    def encode(b):
        args = (b["input_ids"], b["word_mask"], b["phrase_ids"], b["phrase_mask"])
        out = model.text_inputs(*args) if model.merged else model.encode_text(*args)
        return out.global_emb, out.hidden, out.mask, None, None

    return _encode_all(batches, device, encode)


def encode_images(model: MVPTR, batches, device: str = "cpu") -> EncodedSet:
    """The visual encoder's region outputs (merged model: the embedded regions and tags)."""
    def encode(b):
        args = (b["tag_pieces"], b["tag_mask"], b["region_feats"], b["region_mask"])
        if model.merged:
            out = model.image_inputs(*args)
            return None, out.region_hidden, out.region_mask, out.tag_hidden, out.tag_mask
        out = model.encode_image(*args)
        return out.global_emb, out.region_hidden, out.region_mask, None, None

    return _encode_all(batches, device, encode)


@torch.no_grad()
def itm_scores(
    model: MVPTR, texts: EncodedSet, images: EncodedSet, pairs: torch.Tensor, batch_size: int,
    progress: bool = True, *, precision: str = "fp32",
) -> torch.Tensor:
    """ITM log-odds of matching for (image, text) index pairs (P, 2), in batches of pairs
    drawn from any queries, reusing the cached uni-modal outputs. Under torchrun each process
    scores its share of the pairs and all processes get every score."""
    mine = pairs[distributed.shard(len(pairs))].to(texts.hidden.device)
    out = torch.empty(len(mine), device=texts.hidden.device)
    show = progress and distributed.active().main
    for start in tqdm(range(0, len(mine), batch_size), desc="re-rank", disable=not show, leave=False):
        v, t = mine[start : start + batch_size].T
        with autocast(texts.hidden.device, precision):
            fused = images.fused_with(model, texts, v, t, summary_only=True)
            logits = model.itm_logits(fused).float()
        out[start : start + len(v)] = logits[:, 1] - logits[:, 0]
    return distributed.gather_rows(out).cpu()


def candidates(sim: torch.Tensor, k_c: int, k_i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the pairs to re-rank: each image's top k_c captions (N_i, N_t) and each
    caption's top k_i images (N_t, N_i), by the uni-modal similarity ``sim`` (N_i, N_t)."""
    wanted = torch.zeros_like(sim, dtype=torch.bool)
    wanted.scatter_(1, sim.topk(k_c, dim=1).indices, True)
    by_text = torch.zeros_like(sim.t(), dtype=torch.bool)
    by_text.scatter_(1, sim.t().topk(k_i, dim=1).indices, True)
    return wanted, by_text


def reranked_recall(sim: torch.Tensor, fine: torch.Tensor, wanted: torch.Tensor, by_text: torch.Tensor,
                    positives: torch.Tensor) -> dict[str, float]:
    """Recall both ways when re-ranked candidates (scores in ``fine``) come first, in their
    re-ranked order, and the rest keep their uni-modal order."""
    i2t = torch.where(wanted, fine, sim)
    t2i = torch.where(by_text, fine.t(), sim.t())
    return summarise(recall_at_k(i2t, positives, where="re-ranked image-to-text scores", first=wanted),
                     recall_at_k(t2i, positives.t(), where="re-ranked text-to-image scores", first=by_text))


def evaluate_retrieval(
    model: MVPTR,
    texts: EncodedSet,
    images: EncodedSet,
    text_image: torch.Tensor,
    k_c: int,
    k_i: int,
    *, batch_size: int = 128,
    score: str = "itm",
    progress: bool = True,
    precision: str = "fp32",
    keep_pairs: bool = False,
) -> dict:
    """text_image (N_t,): the image index of each caption. Returns {"uni": R, "rerank": R}, and
    with ``keep_pairs`` the re-scored pairs: {"image", "text", "itm", "sim"} (P,) tensors. The
    merged model (no global embeddings) gets {"itm": R} from every pair; see ``all_pairs_retrieval``."""
    if len(images.hidden) == 0 or len(texts.hidden) == 0:
        raise FormatError(f"retrieval: nothing to rank ({len(images.hidden)} images, {len(texts.hidden)} captions)")
    if texts.emb is None:
        if score != "itm":
            raise ConfigError(f"eval.rerank_score={score}: the merged-attention model has no uni-modal similarity "
                              "to add; it ranks by ITM alone (set eval.rerank_score=itm)")
        return all_pairs_retrieval(model, texts, images, text_image, batch_size, progress, precision=precision,
                                   keep_pairs=keep_pairs)
    sim = (images.emb @ texts.emb.t()).float().cpu()  # (N_i, N_t)
    check_finite_scores(sim, "uni-modal similarity (rows: images, columns: captions)")
    positives = text_image[None, :] == torch.arange(len(sim))[:, None]
    uni = summarise(recall_at_k(sim, positives, where="uni-modal image-to-text similarity"),
                    recall_at_k(sim.t(), positives.t(), where="uni-modal text-to-image similarity"))
    k_c, k_i = min(k_c, sim.shape[1]), min(k_i, sim.shape[0])
    if k_c == 0 and k_i == 0:
        return {"uni": uni}
    wanted, by_text = candidates(sim, k_c, k_i)
    pairs = torch.nonzero(wanted | by_text.t())  # each pair once
    itm = itm_scores(model, texts, images, pairs, batch_size, progress, precision=precision)
    if torch.isnan(itm).any():
        first = pairs[torch.isnan(itm)][0].tolist()
        raise NotFiniteError(f"ITM scores: {int(torch.isnan(itm).sum())} of the {len(pairs)} re-ranked pairs are NaN "
                             f"(first: image {first[0]}, caption {first[1]})")
    pair_sim = sim[pairs[:, 0], pairs[:, 1]]
    if score == "itm+sim":
        pair_scores = itm + pair_sim
    elif score == "itm":
        pair_scores = itm
    else:
        raise ConfigError(f"unknown rerank score {score!r} (expected 'itm' or 'itm+sim')")
    fine = torch.full_like(sim, float("nan"))
    fine[pairs[:, 0], pairs[:, 1]] = pair_scores
    rerank = reranked_recall(sim, fine, wanted, by_text, positives)
    out = {"uni": uni, "rerank": rerank, "pairs_scored": len(pairs)}
    if keep_pairs:
        out["pair_scores"] = {"image": pairs[:, 0], "text": pairs[:, 1], "itm": itm, "sim": pair_sim}
    return out


def check_all_pairs(num_images: int, num_texts: int, subset_key: str, subset: int) -> None:
    """Refuse to score every pair of a large set when no subset of images was asked for."""
    pairs = num_images * num_texts
    if subset <= 0 and pairs > ALL_PAIRS_LIMIT:
        # n images bring n * captions-per-image captions: n^2 * captions-per-image pairs
        fits = max(1, math.isqrt(ALL_PAIRS_LIMIT * num_images // num_texts))
        raise ConfigError(
            f"the merged-attention model scores every image-caption pair with its whole encoder: {num_images} "
            f"images x {num_texts} captions = {pairs} passes; set {subset_key} to evaluate on a subset of the "
            f"images ({subset_key}={fits} is about {ALL_PAIRS_LIMIT} pairs), or to {num_images} to score them all")


def all_pairs_retrieval(
    model: MVPTR, texts: EncodedSet, images: EncodedSet, text_image: torch.Tensor, batch_size: int = 128,
    progress: bool = True, *, precision: str = "fp32", keep_pairs: bool = False,
) -> dict:
    """Recall both ways with ITM log-odds for every (image, caption) pair: the merged model's
    ranking, with no coarse step. Returns {"itm": R, "pairs_scored": N_i * N_t}, and with
    ``keep_pairs`` the pairs: {"image", "text", "itm"} (P,) tensors."""
    n_i, n_t = len(images.hidden), len(texts.hidden)
    pairs = torch.cartesian_prod(torch.arange(n_i), torch.arange(n_t))
    itm = itm_scores(model, texts, images, pairs, batch_size, progress, precision=precision)
    scores = itm.view(n_i, n_t)
    positives = text_image[None, :] == torch.arange(n_i)[:, None]
    out = {"itm": summarise(recall_at_k(scores, positives), recall_at_k(scores.t(), positives.t())),
           "pairs_scored": len(pairs)}
    if keep_pairs:
        out["pair_scores"] = {"image": pairs[:, 0], "text": pairs[:, 1], "itm": itm}
    return out


@torch.no_grad()
def encode_dataset(cfg: Config, model, dataset, collate):
    """The uni-modal outputs of a pair dataset's captions and images: (texts, images, each
    caption's image index, the image ids in index order)."""
    image_ids = sorted(dataset.image_index, key=dataset.image_index.get)
    text_items = [{"input_ids": dataset.token_ids[i], "phrases": dataset.phrase_ids[i]} for i in range(len(dataset))]
    text_image = torch.tensor([dataset.image_index[r.image_id] for r in dataset.records])
    loader = lambda items: DataLoader(items, batch_size=cfg.eval.batch_size, collate_fn=collate)  # noqa: E731
    texts = encode_texts(model, loader(text_items), cfg.device)
    images = encode_images(model, loader([dataset.images(i) for i in image_ids]), cfg.device)
    return texts, images, text_image, image_ids


@torch.no_grad()
def rank_dataset(cfg: Config, model, dataset, collate, progress: bool = True, keep_pairs: bool = False,
                 *, subset: tuple[str, int] | None = None) -> tuple[dict, list[str]]:
    """Coarse-to-fine retrieval over a pair dataset's captions and images with ``cfg.eval``'s
    settings (the merged-attention model: ITM over every pair); returns the result and the
    image ids in the order of its indices. ``subset``: the key and value that limited the
    images (default ``eval.max_images``), named when every pair would be too many."""
    e = cfg.eval
    if model.merged:
        check_all_pairs(len(dataset.image_index), len(dataset), *(subset or ("eval.max_images", e.max_images)))
    texts, images, text_image, image_ids = encode_dataset(cfg, model, dataset, collate)
    result = evaluate_retrieval(model, texts, images, text_image, e.k_c, e.k_i, batch_size=e.batch_size,
                                score=e.rerank_score,
                                progress=progress, precision=e.precision, keep_pairs=keep_pairs)
    return result, image_ids
