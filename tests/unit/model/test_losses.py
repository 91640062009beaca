"""Each objective on hand-made tensors."""

import itertools
import math

import pytest
import torch

from mvptr.model import losses as L


def test_hungarian_mcr_is_invariant_to_the_order_of_masked_concepts():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 10)
    # positions 0, 2, 3 are masked with concepts 7, 1, 4; position 1 unmasked
    base = torch.tensor([[7, L.IGNORE, 1, 4]])
    losses = []
    for perm in itertools.permutations([7, 1, 4]):
        labels = base.clone()
        labels[0, [0, 2, 3]] = torch.tensor(perm)
        losses.append(L.mcr_loss(logits, labels, "hungarian").item())
    assert max(losses) - min(losses) < 1e-6
    # without matching the order matters
    at = (torch.tensor([0, 0, 0]), torch.tensor([0, 2, 3]))
    aligned = {round(L.mcr_loss(logits, base.clone().index_put_(at, torch.tensor(p)), "aligned").item(), 5)
               for p in itertools.permutations([7, 1, 4])}
    assert len(aligned) > 1


def test_hungarian_matching_picks_the_cheapest_assignment():
    # position 0 is confident about concept 1, position 1 about concept 0; labels written swapped
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 0, 1] = 10.0
    logits[0, 1, 0] = 10.0
    labels = torch.tensor([[0, 1]])
    assert L.hungarian_labels(logits, labels).tolist() == [[1, 0]]
    assert L.mcr_loss(logits, labels, "hungarian") < 1e-3
    assert L.mcr_loss(logits, labels, "aligned") > 10


def test_mcr_without_targets_is_zero_and_differentiable():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = L.mcr_loss(logits, torch.full((2, 3), L.IGNORE))
    loss.backward()
    assert loss.item() == 0.0


def test_vsc_is_symmetric_and_smallest_for_aligned_pairs():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(2.0)
    assert torch.allclose(L.vsc_loss(img, txt, scale), L.vsc_loss(txt, img, scale))
    aligned = L.vsc_loss(img, img, scale)
    shuffled = L.vsc_loss(img, img[torch.tensor([1, 0, 3, 2, 5, 4])], scale)
    assert aligned < L.vsc_loss(img, txt, scale)
    assert aligned < shuffled


def test_wpg_similarity_is_mean_over_phrases_of_best_region():
    phrases = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # third phrase is padding
    regions = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]])
    two_of_three = torch.tensor([[True, True, False]])
    sim, valid = L.wpg_similarity(phrases, two_of_three, regions, two_of_three)
    # phrase 0 best cos 1 (region 0); phrase 1 best cos 1/sqrt(2) (region 1); region 2 is padding
    assert valid.tolist() == [True]
    assert sim.item() == pytest.approx((1 + 2 ** -0.5) / 2, abs=1e-6)


def test_wpg_is_zero_when_every_positive_beats_its_negative_by_the_margin():
    pos = torch.tensor([0.9, 0.8, 0.5])
    neg = torch.tensor([0.6, 0.5, 0.2])
    valid = torch.tensor([True, True, True])
    assert L.wpg_loss(pos, neg, valid, margin=0.2).item() == 0.0
    assert L.wpg_loss(pos, neg + 0.15, valid, margin=0.2).item() > 0.0
    # an invalid pair (no phrase) does not count
    assert L.wpg_loss(pos, torch.tensor([0.6, 0.5, 0.9]), torch.tensor([True, True, False])).item() == 0.0


@pytest.mark.parametrize("mode", ["sampled", "hardest"])
def test_sampled_negatives_are_never_the_positive_or_the_same_image(mode):
    torch.manual_seed(0)
    b = 16
    image_index = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    same = image_index[:, None] == image_index[None, :]
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(b, b) * 5
        logits.fill_diagonal_(100.0)  # the positive is by far the most similar
        idx, valid = L.sample_negatives(logits, same, mode, gen)
        assert valid.all()
        assert not same[torch.arange(b), idx].any()


def test_rows_without_any_negative_are_marked_invalid():
    same = torch.ones(3, 3, dtype=torch.bool)
    _, valid = L.sample_negatives(torch.randn(3, 3), same)
    assert not valid.any()


def test_itm_and_mlm_cross_entropy():
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    assert L.itm_loss(logits, torch.tensor([0, 1])) < 1e-3
    mlm = torch.randn(4, 10)
    labels = torch.tensor([1, L.IGNORE, 3, L.IGNORE])
    ref = torch.nn.functional.cross_entropy(mlm[[0, 2]], torch.tensor([1, 3]))
    assert torch.allclose(L.mlm_loss(mlm, labels), ref)


def test_batched_hungarian_matches_scipy_assignment_cost():
    from scipy.optimize import linear_sum_assignment

    gen = torch.Generator().manual_seed(0)
    labels = torch.full((40, 9), L.IGNORE)
    for b in range(40):  # 0..9 masked concepts per sample, both brute-force and scipy sizes
        k = b % 10
        labels[b, torch.randperm(9, generator=gen)[:k]] = torch.randint(0, 12, (k,), generator=gen)
    logits = torch.randn(40, 9, 12, generator=gen)
    out = L.hungarian_labels(logits, labels)
    probs = logits.softmax(-1)
    for b in range(40):
        pos = torch.nonzero(labels[b] != L.IGNORE).flatten()
        assert sorted(out[b, pos].tolist()) == sorted(labels[b, pos].tolist())  # a permutation
        assert torch.equal(out[b] == L.IGNORE, labels[b] == L.IGNORE)
        cost = 1 - probs[b, pos][:, labels[b, pos]]
        r, c = linear_sum_assignment(cost.numpy())
        ours = sum(1 - probs[b, p, out[b, p]].item() for p in pos.tolist())
        assert abs(ours - cost[r, c].sum().item()) < 1e-5


def _two_samples():
    """Sample 0 has one masked item (loss ln 2: two equal logits), sample 1 has three items
    predicted almost surely right (loss ~0)."""
    logits = torch.zeros(2, 3, 2)
    logits[1, :, 0] = 50.0
    labels = torch.tensor([[0, L.IGNORE, L.IGNORE], [0, 0, 0]])
    return logits, labels


def test_per_sample_average_weighs_each_sample_once_as_eqs_2_3_and_9():
    logits, labels = _two_samples()
    ln2 = math.log(2)
    # per token: ln 2 over 4 items; per sample: (ln 2 + 0) / 2
    assert L.mcr_loss(logits, labels, "aligned", "token").item() == pytest.approx(ln2 / 4)
    assert L.mcr_loss(logits, labels, "aligned", "sample").item() == pytest.approx(ln2 / 2)
    decode = lambda h: h  # noqa: E731  (the hidden states are the logits here)
    assert L.masked_word_loss(decode, logits, labels, "token").item() == pytest.approx(ln2 / 4)
    assert L.masked_word_loss(decode, logits, labels, "sample").item() == pytest.approx(ln2 / 2)


def test_per_sample_average_leaves_out_samples_without_masked_items_and_is_zero_without_any():
    logits, labels = _two_samples()
    with_empty = torch.cat([labels, torch.full((1, 3), L.IGNORE)])
    padded = torch.cat([logits, torch.randn(1, 3, 2)])
    assert L.mcr_loss(padded, with_empty, "aligned", "sample").item() == pytest.approx(math.log(2) / 2)
    none = torch.full((2, 3), L.IGNORE)
    loss = L.mcr_loss(logits.requires_grad_(), none, "aligned", "sample")
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="loss average"):
        L.mcr_loss(logits, labels, "aligned", "per_batch")
