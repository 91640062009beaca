"""Scoring of compositional probes: ties fail, chance is never beaten by a blind scorer, and
Winoground's text, image and group scores are what Thrush et al. define."""

import math

import pytest
import torch

from mvptr.eval.probes import GROUP_CHANCE, ProbeSet, group_scores, pair_accuracy, proportion, score_probes


def _set():
    """Two images; captions 0/1 true/false of image 0, 2/3 of image 1; a group of both."""
    captions = ["A red circle above a blue square.", "A blue square above a red circle.",
                "A blue circle above a red square.", "A red square above a blue circle."]
    return ProbeSet(captions, [{}, {}], {"relation_swap": [(0, 0, 1), (1, 2, 3)]}, {"winoground": [(0, 1, 0, 2)]})


def _scorer(table):
    return lambda pairs: torch.tensor([table[(int(i), int(c))] for i, c in pairs], dtype=torch.float32)


def test_a_tie_fails_and_the_interval_is_wilsons():
    r = pair_accuracy(torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 0.7, 1.0]))
    assert r["acc"] == 50.0 and r["n"] == 4 and r["ties"] == 1 and r["chance"] == 50.0
    # Wilson's interval of 2 of 4 at 95%: centre (p + z^2/2n) / (1 + z^2/n),
    # half width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.959964, 4, 0.5
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert r["ci95"] == pytest.approx([100 * (centre - half), 100 * (centre + half)], abs=0.01)
    assert proportion(0, 0, 50.0) == {"acc": None, "ci95": None, "n": 0, "chance": 50.0}


def test_winoground_scores_follow_their_definitions():
    # s[n, image, caption]; each row: (text ok, image ok)
    s = torch.tensor([
        [[2.0, 1.0], [0.0, 3.0]],  # both images prefer their own caption, both captions their own image
        [[2.0, 1.0], [3.0, 4.0]],  # text right; caption 0 prefers image 1 (3 > 2): image wrong
        [[1.0, 0.0], [2.0, 3.0]],  # text right (1 > 0, 3 > 2); caption 0: 1 < 2: image wrong
        [[1.0, 2.0], [0.0, 3.0]],  # image 0 prefers caption 1: text wrong; image: 1 > 0, 3 > 2 right
        [[1.0, 1.0], [1.0, 1.0]],  # all tied: nothing right
    ])
    r = group_scores(s)
    assert r["text"]["acc"] == 60.0 and r["image"]["acc"] == 40.0 and r["group"]["acc"] == 20.0
    assert r["group"]["chance"] == round(100 / 6, 2) == round(GROUP_CHANCE["group"], 2)


def test_an_oracle_passes_every_probe_and_a_constant_scorer_passes_none():
    probes = _set()
    oracle = _scorer({(0, 0): 1.0, (0, 1): 0.0, (1, 2): 1.0, (1, 3): 0.0, (1, 0): 0.0, (0, 2): 0.0})
    r = score_probes(oracle, probes)
    assert r["relation_swap"]["acc"] == 100.0 and r["relation_swap"]["ties"] == 0
    assert all(r["winoground"][k]["acc"] == 100.0 for k in ("text", "image", "group"))
    flat = score_probes(lambda pairs: torch.zeros(len(pairs)), probes)
    assert flat["relation_swap"]["acc"] == 0.0 and flat["relation_swap"]["ties"] == 2
    assert all(flat["winoground"][k]["acc"] == 0.0 for k in ("text", "image", "group"))
    # the oracle turned around fails everything: the true caption's side is not mixed up
    assert score_probes(lambda pairs: -oracle(pairs), probes)["relation_swap"]["acc"] == 0.0


def test_each_pair_is_scored_once_and_nan_is_an_error():
    probes = ProbeSet(["a", "b"], [{}], {"x": [(0, 0, 1), (0, 0, 1)]}, {"g": [(0, 0, 0, 1)]})
    seen = []

    def score(pairs):
        seen.append(pairs.clone())
        return torch.arange(len(pairs), dtype=torch.float32)

    score_probes(score, probes)
    assert len(seen) == 1 and len(torch.unique(seen[0], dim=0)) == len(seen[0]) == 2
    with pytest.raises(ValueError, match="NaN"):
        score_probes(lambda pairs: torch.full((len(pairs),), float("nan")), probes, "itm")
