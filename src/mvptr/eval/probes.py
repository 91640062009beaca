"""Compositional probes, scored: does a model prefer a true caption to a minimally changed
false one, and does it pair two images with two captions of the same words the right way?

Two kinds of probe (see docs/DECISIONS.md, "Compositional probes"):

* a pair probe (ARO, Yuksekgonul et al. 2023): one image, a true and a false caption; it is
  passed when the true caption scores strictly higher. Accuracy is the share passed; chance
  is 50%;
* a group (Winoground, Thrush et al. 2022): images 0 and 1, captions 0 and 1 of the same
  words in another order, caption k true of image k. Text score: each image scores its own
  caption above the other; image score: each caption scores its own image above the other;
  group score: both. Chance: 25%, 25% and 1/6.

A tie is a failure, as in ARO (an argmax over [false, true] takes the first of equal
scores) and Winoground (strict comparisons): a scorer that scores everything alike passes
nothing, never more than chance. A NaN score is an error. Each share comes with its 95%
Wilson interval.

This module knows nothing of where the probes come from: a ``ProbeSet`` holds captions,
images (as the collator takes them) and index tuples; ``score_probes`` takes any function of
(image, caption) index pairs, ``model_scorers`` makes the ITM and cosine ones of a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from scipy.stats import binomtest

from ..model.modeling import MVPTR
from .retrieval import EncodedSet, check_finite_scores, itm_scores

PAIR_CHANCE = 50.0
GROUP_CHANCE = {"text": 25.0, "image": 25.0, "group": 100.0 / 6}
TIE_RULE = "a tie is a failure (ARO's argmax over [false, true]; Winoground's strict comparisons)"

Scorer = Callable[[torch.Tensor], torch.Tensor]  # (P, 2) (image, caption) index pairs -> (P,) scores


@dataclass
class ProbeSet:
    captions: list[str]
    images: list[dict]  # each image as the collator takes it (region_feats, boxes, tags, width, height)
    pairs: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # kind -> (image, true, false)
    # kind -> (image 0, image 1, caption 0, caption 1), caption k true of image k
    groups: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {**{k: len(v) for k, v in self.pairs.items()}, **{k: len(v) for k, v in self.groups.items()}}


def proportion(correct: int, n: int, chance: float, ties: int | None = None) -> dict:
    """{"acc", "ci95", "n", "chance"} in percent (``ci95``: Wilson interval); acc None when n = 0."""
    out = {"acc": None, "ci95": None, "n": int(n), "chance": round(chance, 2)}
    if n:
        ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
        out.update(acc=round(100.0 * correct / n, 2), ci95=[round(100.0 * ci.low, 2), round(100.0 * ci.high, 2)])
    if ties is not None:
        out["ties"] = int(ties)
    return out


def pair_accuracy(true_scores: torch.Tensor, false_scores: torch.Tensor) -> dict:
    """Share of probes whose true caption scores strictly above the false one (a tie fails)."""
    passed = int((true_scores > false_scores).sum())
    return proportion(passed, len(true_scores), PAIR_CHANCE, ties=int((true_scores == false_scores).sum()))


def group_scores(s: torch.Tensor) -> dict:
    """Winoground's three scores of ``s`` (N, 2, 2): s[n, i, c] = score of image i with caption c."""
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    n = len(s)
    return {"text": proportion(int(text.sum()), n, GROUP_CHANCE["text"]),
            "image": proportion(int(image.sum()), n, GROUP_CHANCE["image"]),
            "group": proportion(int((text & image).sum()), n, GROUP_CHANCE["group"])}


def _group_pairs(groups: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(N * 4, 2) (image, caption) pairs of each group in [i0 c0, i0 c1, i1 c0, i1 c1] order."""
    g = torch.as_tensor(groups, dtype=torch.long).reshape(-1, 4)
    return torch.stack([torch.stack([g[:, i], g[:, 2 + c]], 1) for i in (0, 1) for c in (0, 1)], 1).reshape(-1, 2)


def score_probes(score: Scorer, probes: ProbeSet, name: str = "scores") -> dict:
    """Every probe of ``probes`` under ``score``: {kind: pair accuracy} and {kind: group scores}.
    Each distinct (image, caption) pair is scored once; a NaN score is an error naming ``name``."""
    parts = {}
    for kind, rows in probes.pairs.items():
        t = torch.as_tensor(rows, dtype=torch.long).reshape(-1, 3)
        parts[("pair", kind)] = torch.cat([t[:, [0, 1]], t[:, [0, 2]]])
    for kind, rows in probes.groups.items():
        parts[("group", kind)] = _group_pairs(rows)
    if not parts or not sum(len(p) for p in parts.values()):
        return {}
    unique, inverse = torch.unique(torch.cat(list(parts.values())), dim=0, return_inverse=True)
    scores = score(unique).float().cpu()
    check_finite_scores(scores[None], f"{name} of the probes' (image, caption) pairs")
    scores = scores[inverse]
    out, start = {}, 0
    for (what, kind), pairs in parts.items():
        s = scores[start : start + len(pairs)]
        start += len(pairs)
        if what == "pair":
            n = len(pairs) // 2
            out[kind] = pair_accuracy(s[:n], s[n:])
        else:
            out[kind] = group_scores(s.reshape(-1, 2, 2))
    return out


def model_scorers(model: MVPTR, texts: EncodedSet, images: EncodedSet, batch_size: int = 128,
                  precision: str = "fp32") -> dict[str, Scorer]:
    """{"itm": ITM log-odds, "cosine": cosine of the global embeddings} of encoded images and
    captions (the merged-attention model has no global embeddings: ITM only)."""
    def itm(pairs: torch.Tensor) -> torch.Tensor:
        return itm_scores(model, texts, images, pairs, batch_size, progress=False, precision=precision)

    scorers = {"itm": itm}
    if texts.emb is not None and images.emb is not None:
        def cosine(pairs: torch.Tensor) -> torch.Tensor:
            v = torch.nn.functional.normalize(images.emb[pairs[:, 0]].float(), dim=-1)
            t = torch.nn.functional.normalize(texts.emb[pairs[:, 1]].float(), dim=-1)
            return (v * t).sum(-1).cpu()

        scorers["cosine"] = cosine
    return scorers


def probes_table(result: dict) -> str:
    """A plain-text table of ``score_probes`` results by scorer: {scorer: {kind: ...}}."""
    lines = [f"{'scorer':<8} {'probe':<22} {'score':<6} {'acc':>7} {'95% CI':>16} {'n':>5} {'chance':>7}"]
    for scorer, kinds in result.items():
        for kind, r in kinds.items():
            rows = [("", r)] if "acc" in r else list(r.items())
            for part, p in rows:
                acc = "—" if p["acc"] is None else f"{p['acc']:.2f}"
                ci = "—" if p["ci95"] is None else f"[{p['ci95'][0]:.1f}, {p['ci95'][1]:.1f}]"
                lines.append(f"{scorer:<8} {kind:<22} {part:<6} {acc:>7} {ci:>16} {p['n']:>5} {p['chance']:>7.2f}")
    return "\n".join(lines)
