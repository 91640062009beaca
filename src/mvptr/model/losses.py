"""The pre-training objectives as pure functions of tensors (paper equations 1-9).

Label tensors use -100 for "no target", as torch's cross entropy does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..core.errors import ConfigError
from ..text.tokenizer import IGNORE

# up to this many masked concepts, every permutation is scored at once (6! = 720)
BRUTE_FORCE_MAX = 6


def _best_permutations(cost: torch.Tensor) -> torch.Tensor:
    """Optimal assignments of (n, k, k) cost matrices: (n, k), column chosen for each row."""
    n, k, _ = cost.shape
    if k <= BRUTE_FORCE_MAX:
        perms = torch.tensor(list(itertools.permutations(range(k))), device=cost.device)  # (P, k)
        totals = cost[:, torch.arange(k, device=cost.device)[None, :], perms].sum(-1)  # (n, P)
        return perms[totals.argmin(1)]  # the identity comes first, so ties keep the written order
    best = np.empty((n, k), dtype=np.int64)
    for row, c in enumerate(cost.cpu().numpy()):  # rare: more masked concepts than BRUTE_FORCE_MAX
        r, cols = linear_sum_assignment(c)
        best[row, r] = cols
    return torch.as_tensor(best, device=cost.device)


def hungarian_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reorder each sample's masked concept labels among its masked positions (eq. 1).

    logits (B, L, C), labels (B, L) with IGNORE at unmasked positions. The assignment
    minimises sum_i 1 - p(label_{a(i)} | position i), so the loss does not depend on the
    order in which the (unordered) concepts were written. Samples are batched by their
    number of masked concepts: one exact search per count, none per sample.
    """
    valid = (labels != IGNORE).cpu()  # the one host sync: the groups' shapes depend on it
    counts = valid.sum(1)
    out = labels.clone()
    with torch.no_grad():
        for k in counts.unique().tolist():
            if k < 2:
                continue
            rows_cpu = torch.nonzero(counts == k).flatten()
            pos_cpu = torch.nonzero(valid[rows_cpu])[:, 1].view(len(rows_cpu), k)  # masked positions, in order
            rows, pos = rows_cpu.to(labels.device)[:, None], pos_cpu.to(labels.device)
            lab = labels[rows, pos]  # (n, k)
            probs = logits[rows, pos].float().softmax(-1)  # (n, k, C)
            # cost[n, i, j] = 1 - p(label written at j | position i)
            cost = 1.0 - probs.gather(-1, lab[:, None, :].expand(-1, k, -1))
            out[rows, pos] = lab.gather(1, _best_permutations(cost))
    return out


def mcr_loss(logits: torch.Tensor, labels: torch.Tensor, matching: str = "hungarian",
             average: str = "token") -> torch.Tensor:
    """Masked concept recovering (eqs. 2-3): cross entropy over concepts at masked positions,
    logits (B, L, C) and labels (B, L); ``average`` as in :func:`per_sample_mean_ce`."""
    if matching == "hungarian":
        labels = hungarian_labels(logits, labels)
    elif matching != "aligned":
        raise ConfigError(f"unknown MCR matching {matching!r} (expected 'hungarian' or 'aligned')")
    if average == "sample":
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
        return per_sample_mean_ce(logits.flatten(0, -2), labels.flatten(), rows.flatten(), labels.shape[0])
    _check_average(average)
    return _labelled_mean_ce(logits, labels)


def _check_average(average: str) -> None:
    if average not in ("token", "sample"):
        raise ConfigError(f"unknown loss average {average!r} (expected 'token' or 'sample')")


def _labelled_mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy averaged over labelled positions; 0 (still in the graph) when there are none.
    No branch on the labels, so no wait for the device."""
    total = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp(min=1)


def per_sample_mean_ce(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Cross entropy as eqs. 2, 3 and 9 write it: each sample's mean over its own labelled items,
    then the mean over the samples that have any. logits (K, C), labels (K,), ``rows`` (K,): the
    sample of each item, among ``num_rows``. A sample with one masked item then weighs as much
    as one with ten (the per-token mean weighs it a tenth as much). 0, in the graph, with none."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none")
    labelled = (labels != IGNORE).float()
    total = ce.new_zeros(num_rows).index_add(0, rows, ce)
    count = ce.new_zeros(num_rows).index_add(0, rows, labelled)
    return (total / count.clamp(min=1)).sum() / (count > 0).sum().clamp(min=1)


# the learnable logit scale 1 / tau is used clamped at 100 (tau >= 0.01), as CLIP and open_clip do
MAX_LOGIT_SCALE = math.log(100.0)


def vsc_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """1 / tau from the parameter log(1 / tau), at most 100; above the clamp the parameter gets no gradient."""
    return logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def vsc_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """U / tau: rows are images, columns are texts."""
    return vsc_scale(logit_scale) * image_emb @ text_emb.t()


def vsc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the in-batch similarity matrix (eqs. 4-5); row i matches column i."""
    logits = vsc_logits(image_emb, text_emb, logit_scale).float()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def sample_negatives(
    logits: torch.Tensor, exclude: torch.Tensor, mode: str = "sampled", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one in-batch negative per row of ``logits`` (rows: queries, columns: candidates).

    ``exclude`` (B, B) marks candidates that are not negatives (the positive itself and other
    captions of the same image). "sampled" draws from softmax(logits) over the rest (the paper's
    p^{v2s} / p^{s2v}); "hardest" takes the argmax (official code); "uniform" draws any of the
    rest alike, whatever the logits. Returns (indices, valid): rows with no admissible candidate
    are marked invalid.
    """
    if mode == "uniform":
        return sample_negatives(torch.zeros_like(logits), exclude, "sampled", generator)
    with torch.no_grad():
        masked = logits.float().masked_fill(exclude, float("-inf"))
        valid = ~exclude.all(1)
        masked[~valid] = 0.0  # any finite row; its pick is discarded
        if mode == "hardest":
            idx = masked.argmax(1)
        elif mode == "sampled":
            # drawn where the seeded generator lives (the training device: no host sync)
            probs = masked.softmax(1)
            if generator is not None:
                probs = probs.to(generator.device)
            idx = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
        else:
            raise ConfigError(f"unknown negative sampling {mode!r} (expected 'sampled', 'hardest' or 'uniform')")
    return idx, valid


def wpg_similarity(
    phrase_hidden: torch.Tensor, phrase_mask: torch.Tensor, region_hidden: torch.Tensor, region_mask: torch.Tensor,
    top: int = 1, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S^wpg(V, S) = mean over phrases of max over regions of cosine (eq. 6). With ``top`` > 1
    each phrase scores by a uniformly drawn one of its ``top`` most similar regions instead
    (the official code's WPG uses 3).

    Returns (similarity (P,), valid (P,)): a pair is valid when it has a phrase and a region.
    """
    p = F.normalize(phrase_hidden.float(), dim=-1)
    r = F.normalize(region_hidden.float(), dim=-1)
    cos = torch.einsum("pmh,prh->pmr", p, r).masked_fill(~region_mask[:, None, :].bool(), float("-inf"))
    # a batch whose images have no regions at all has nothing to take the max over
    if not cos.shape[-1]:
        best = cos.new_zeros(cos.shape[:2])
    elif top == 1:
        best = cos.max(-1).values
    else:
        k = min(top, cos.shape[-1])
        ranked = cos.topk(k, dim=-1).values  # (P, M, k); -inf beyond an image's regions
        n = region_mask.bool().sum(1).clamp(min=1, max=k)[:, None].to(cos.device)
        draw = torch.rand(cos.shape[:2], generator=generator, device=None if generator is None else generator.device)
        pick = (draw.to(cos.device) * n).long().clamp(max=k - 1)
        best = ranked.gather(-1, pick[..., None]).squeeze(-1)
    best = best.masked_fill(~phrase_mask.bool(), 0.0)
    best = torch.nan_to_num(best, neginf=0.0)
    n = phrase_mask.sum(1)
    valid = (n > 0) & region_mask.bool().any(1)
    return best.sum(1) / n.clamp(min=1), valid


def wpg_loss(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Hinge loss max(0, margin + S(V', S) - S(V, S)) over valid pairs (eq. 7, with max for min)."""
    hinge = F.relu(margin + neg - pos) * valid
    return hinge.sum() / valid.sum().clamp(min=1)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary matching cross entropy over positives and hard negatives (eq. 8); pairs labelled
    IGNORE (a query with no admissible negative) take no part."""
    return _labelled_mean_ce(logits, labels)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, average: str = "token",
             rows: torch.Tensor | None = None, num_rows: int = 0) -> torch.Tensor:
    """Masked language modelling cross entropy over masked word pieces (eq. 9): logits (K, C)
    and labels (K,) of the masked pieces; with ``average="sample"``, ``rows`` (K,) names each
    piece's caption among ``num_rows`` (see :func:`per_sample_mean_ce`)."""
    if average == "sample":
        if rows is None:
            raise ValueError("mlm_loss(average='sample') needs the caption of each masked piece (rows)")
        return per_sample_mean_ce(logits, labels, rows, num_rows)
    _check_average(average)
    return _labelled_mean_ce(logits, labels)


def masked_word_loss(decode, word_hidden: torch.Tensor, labels: torch.Tensor, average: str = "token") -> torch.Tensor:
    """MLM over a batch: ``decode`` (the MLM head) reads the outputs (B, N, H) of the masked
    pieces only, so only they reach the vocabulary-sized decoder; labels (B, N)."""
    selected = labels != IGNORE
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(labels)[selected]
    return mlm_loss(decode(word_hidden[selected]), labels[selected], average, rows, len(labels))


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy on the soft scores, summed over answers, averaged over questions."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / len(logits)
def grounding_loss(phrase: torch.Tensor, regions: torch.Tensor, region_mask: torch.Tensor, iou: torch.Tensor,
                   mention_mask: torch.Tensor) -> torch.Tensor:
    """MSE between the mention-region cosines (B, K, R) and the regions' IoU with the mention's box."""
    cos = F.normalize(phrase.float(), dim=-1) @ F.normalize(regions.float(), dim=-1).transpose(1, 2)
    valid = mention_mask[:, :, None] & region_mask[:, None, :].bool()
    # the mean over valid pairs as a sum over a clamped count, as the pre-training losses do:
    # no branch on the data, so no wait for the device (0, still in the graph, when none is valid)
    return ((cos - iou.float()) ** 2 * valid).sum() / valid.sum().clamp(min=1)
def mention_outputs(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each mention's mean word-piece output: weights (B, K, N) over the first N positions."""
    return torch.einsum("bkn,bnh->bkh", weights, hidden[:, : weights.shape[2]].float())
