"""Recall@K against a naive loop, and the coarse-to-fine re-ranker's bookkeeping."""

import pytest
import torch

from mvptr.eval.retrieval import EncodedSet, chance_recall, evaluate_retrieval, recall_at_k


def naive_recall(scores, positives, k):
    hits = 0
    for q in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda c: (-scores[q, c].item(), not positives[q, c].item()))
        hits += any(positives[q, c] for c in order[:k])
    return 100.0 * hits / scores.shape[0]


@pytest.mark.parametrize("seed", range(5))
def test_recall_matches_a_naive_loop_with_several_captions_per_image(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, per = 7, 3
    scores = torch.randn(n_img, n_img * per, generator=g).round(decimals=1)  # ties happen
    text_image = torch.arange(n_img).repeat_interleave(per)
    positives = text_image[None, :] == torch.arange(n_img)[:, None]
    fast = recall_at_k(scores, positives, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert fast[k] == pytest.approx(naive_recall(scores, positives, k))
    fast_t = recall_at_k(scores.t(), positives.t(), ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert fast_t[k] == pytest.approx(naive_recall(scores.t(), positives.t(), k))


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
