"""The ITM separation metric: AUC on degenerate and known inputs, and the negatives it draws."""

import math

import pytest
import torch

from mvptr.eval.matching import auc, first_caption_of_each_image, negative_images


def test_auc_of_known_orders():
    assert auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auc([1.0, 3.0], [2.0]) == 0.5


def test_a_model_that_scores_everything_alike_gets_one_half():
    assert auc([0.7] * 5, [0.7] * 50) == 0.5


def test_ties_count_half():
    # one positive above both negatives, one tied with a negative and above the other
    assert math.isclose(auc([2.0, 1.0], [1.0, 0.0]), (2 + 1.5) / 4)


@pytest.mark.parametrize("pos, neg", [([], [1.0]), ([1.0], []), ([float("nan")], [1.0]), ([1.0], [float("nan")])])
def test_empty_or_nan_scores_are_errors(pos, neg):
    with pytest.raises(ValueError):
        auc(pos, neg)


def test_negatives_are_never_the_captions_own_image():
    torch.manual_seed(0)
    n_images, text_image = 6, torch.arange(6).repeat_interleave(3)
    sim = torch.randn(n_images, len(text_image))
    sim[text_image, torch.arange(len(text_image))] = 10.0  # the own image is the most similar
    random, hard = negative_images(sim, text_image, hard_k=10, seed=1)
    assert hard.shape == (len(text_image), n_images - 1)  # at most every other image
    assert (random != text_image).all()
    assert (hard != text_image[:, None]).all()


def test_hard_negatives_are_the_most_similar_other_images():
    text_image = torch.tensor([0, 1])
    sim = torch.tensor([[9.0, 0.1], [0.5, 9.0], [0.7, 0.3], [0.2, 0.9]])  # images x captions
    _, hard = negative_images(sim, text_image, hard_k=2)
    assert hard.tolist() == [[2, 1], [3, 2]]


def test_first_caption_of_each_image():
    assert first_caption_of_each_image(torch.tensor([0, 0, 1, 2, 2, 1])).tolist() == [0, 2, 3]
