"""Recall@K against a naive loop, and the coarse-to-fine re-ranker's bookkeeping."""

import math

import pytest
import torch

from mvptr.eval.retrieval import EncodedSet, chance_recall, evaluate_retrieval, recall_at_k


def naive_recall(scores, positives, k, order_ties=None):
    """Hits at k when the candidates are sorted by score, ties in ``order_ties``'s order."""
    hits = 0
    for q in range(scores.shape[0]):
        tie = order_ties[q] if order_ties is not None else torch.zeros(scores.shape[1])
        order = sorted(range(scores.shape[1]), key=lambda c: (-scores[q, c].item(), tie[c].item()))
        hits += any(positives[q, c] for c in order[:k])
    return 100.0 * hits / scores.shape[0]


def _positives(n_img, per):
    text_image = torch.arange(n_img).repeat_interleave(per)
    return text_image[None, :] == torch.arange(n_img)[:, None]


@pytest.mark.parametrize("seed", range(5))
def test_recall_without_ties_matches_a_naive_loop_with_several_captions_per_image(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, per = 7, 3
    scores = torch.randn(n_img, n_img * per, generator=g, dtype=torch.float64)  # no ties
    positives = _positives(n_img, per)
    for s, pos in ((scores, positives), (scores.t(), positives.t())):
        fast = recall_at_k(s, pos, ks=(1, 2, 5))
        for k in (1, 2, 5):
            assert fast[k] == pytest.approx(naive_recall(s, pos, k))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_recall_with_ties_is_the_mean_over_random_tie_breaking(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, per, draws = 6, 3, 400
    scores = torch.randint(0, 3, (n_img, n_img * per), generator=g).float()  # many ties
    positives = _positives(n_img, per)
    fast = recall_at_k(scores, positives, ks=(1, 2, 5))
    for k in (1, 2, 5):
        sampled = [naive_recall(scores, positives, k, torch.rand(scores.shape, generator=g)) for _ in range(draws)]
        mean = sum(sampled) / draws
        # the sampled mean's standard error is at most 50 / sqrt(draws) percentage points
        assert fast[k] == pytest.approx(mean, abs=5 * 50 / draws**0.5)


@pytest.mark.parametrize("seed", range(3))
def test_candidates_ranked_first_come_before_all_others_in_their_own_order(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, per = 6, 2
    positives = _positives(n_img, per)
    scores = torch.randint(-3, 4, (n_img, n_img * per), generator=g).float()  # ties, and ranges that overlap
    first = torch.rand(n_img, n_img * per, generator=g) < 0.3
    lifted = torch.where(first, scores + 100.0, scores)  # the same order, written as one score
    assert recall_at_k(scores, positives, ks=(1, 2, 5), first=first) == pytest.approx(
        recall_at_k(lifted, positives, ks=(1, 2, 5)))


def test_constant_scores_give_exactly_the_chance_recall():
    n_img, per = 10, 5
    positives = _positives(n_img, per)
    scores = torch.zeros(n_img, n_img * per)
    i2t, t2i = recall_at_k(scores, positives), recall_at_k(scores.t(), positives.t())
    n_text = n_img * per
    for k in (1, 5, 10):  # a random ranking: no positive among the first k with C(n - per, k) / C(n, k)
        assert i2t[k] == pytest.approx(100 * (1 - math.comb(n_text - per, k) / math.comb(n_text, k)), abs=1e-9)
        assert t2i[k] == pytest.approx(100 * k / n_img, abs=1e-9)
        assert round(i2t[k], 2) == chance_recall(n_img, per)[f"i2t_r{k}"]


def test_nan_scores_and_empty_queries_are_errors():
    positives = _positives(3, 2)
    scores = torch.zeros(3, 6)
    scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"my scores: 1 NaN scores \(first at row 1, column 4\)"):
        recall_at_k(scores, positives, where="my scores")
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k(torch.zeros(0, 6), positives[:0])
    with pytest.raises(ValueError, match="query 0 has no positive"):
        recall_at_k(torch.zeros(1, 6), torch.zeros(1, 6, dtype=torch.bool))


@pytest.mark.slow
def test_chance_recall_is_the_expected_recall_of_a_random_ranking():
    g = torch.Generator().manual_seed(0)
    n_img, per = 10, 5
    text_image = torch.arange(n_img).repeat_interleave(per)
    positives = text_image[None, :] == torch.arange(n_img)[:, None]
    sims = [recall_at_k(torch.rand(n_img, n_img * per, generator=g), positives)[1] for _ in range(2000)]
    assert sum(sims) / len(sims) == pytest.approx(chance_recall(n_img, per)["i2t_r1"], abs=1.0)


class FakeModel:
    """Scores a pair by a fixed table, and counts how often each pair is scored."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def fuse(self, text_hidden, text_mask, region_hidden, region_mask, summary_only=False):
        class Out:
            pass

        out = Out()
        out.pairs = torch.stack([region_hidden[:, 0, 0].long(), text_hidden[:, 0, 0].long()], 1)
        return out

    def itm_logits(self, fused):
        self.calls += [tuple(p) for p in fused.pairs.tolist()]
        s = self.table[fused.pairs[:, 0], fused.pairs[:, 1]]
        return torch.stack([torch.zeros_like(s), s], 1)


def encoded(n, emb):
    hidden = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 1, 2).clone()
    return EncodedSet(emb, hidden, torch.ones(n, 1, dtype=torch.bool))


def test_rerank_scores_each_pair_once_and_fixes_a_wrong_coarse_order():
    n_img, per = 4, 2
    text_image = torch.arange(n_img).repeat_interleave(per)
    g = torch.Generator().manual_seed(0)
    img_emb = torch.nn.functional.normalize(torch.randn(n_img, 8, generator=g), dim=-1)
    # texts embedded next to the wrong image: uni-modal recall@1 is 0
    txt_emb = img_emb[(text_image + 1) % n_img]
    table = (text_image[None, :] == torch.arange(n_img)[:, None]).float() * 10  # ITM knows the truth
    model = FakeModel(table)
    out = evaluate_retrieval(model, encoded(n_img * per, txt_emb), encoded(n_img, img_emb), text_image,
                             k_c=n_img * per, k_i=n_img, batch_size=5, progress=False)
    assert out["uni"]["i2t_r1"] == 0.0 and out["uni"]["t2i_r1"] == 0.0
    assert out["rerank"]["i2t_r1"] == 100.0 and out["rerank"]["t2i_r1"] == 100.0
    assert len(model.calls) == len(set(model.calls)) == n_img * n_img * per == out["pairs_scored"]


def test_a_model_that_scores_everything_alike_is_at_chance_and_nan_is_an_error():
    n_img, per = 5, 2
    text_image = torch.arange(n_img).repeat_interleave(per)
    emb = torch.nn.functional.normalize(torch.ones(n_img * per, 4), dim=-1)  # every embedding the same
    model = FakeModel(torch.zeros(n_img, n_img * per))  # and every ITM score the same
    out = evaluate_retrieval(model, encoded(n_img * per, emb), encoded(n_img, emb[:n_img]), text_image,
                             k_c=4, k_i=2, batch_size=8, progress=False)
    chance = chance_recall(n_img, per)
    for key in ("i2t_r1", "t2i_r1", "t2i_r5"):
        assert out["uni"][key] == pytest.approx(chance[key], abs=0.01)
    assert out["uni"]["rsum"] < 600 and out["rerank"]["rsum"] < 600
    assert out["rerank"]["t2i_r1"] == pytest.approx(chance["t2i_r1"], abs=0.01)
    model.table[2, 3] = float("nan")
    with pytest.raises(ValueError, match="ITM scores: 1 of the .* pairs are NaN"):
        evaluate_retrieval(model, encoded(n_img * per, emb), encoded(n_img, emb[:n_img]), text_image,
                           k_c=n_img * per, k_i=n_img, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="nothing to rank"):
        evaluate_retrieval(model, encoded(0, emb[:0]), encoded(n_img, emb[:n_img]), text_image[:0],
                           k_c=4, k_i=2, progress=False)
