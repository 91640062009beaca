"""The official code's variants, as options: WPG as released and MCR^s without a loss."""

import dataclasses

import numpy as np
import pytest
import torch

from mvptr.core.config import load_config
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.model import losses as L
from mvptr.model.modeling import MVPTR
from mvptr.text.tokenizer import WordPieces, load_tokenizer
from mvptr.train.objectives import stage_masking
from mvptr.train.recipes import pretraining_losses, pretraining_recipe

PIECES = WordPieces(load_tokenizer(), 16)


def test_wpg_similarity_by_a_random_one_of_the_top_three_regions():
    g = torch.Generator().manual_seed(0)
    phrases, regions = torch.randn(2, 2, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    region_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])  # image 1: two regions
    phrase_mask = torch.tensor([[True, False], [True, False]])  # one phrase each: its score is the mean
    unit = torch.nn.functional.normalize
    cos = torch.stack([unit(regions[b], dim=-1) @ unit(phrases[b, 0], dim=-1) for b in range(2)])  # (2, 5)
    top3 = [set(cos[0].topk(3).values.tolist()), set(cos[1, :2].tolist())]
    seen = [set(), set()]
    for seed in range(60):
        s, valid = L.wpg_similarity(phrases, phrase_mask, regions, region_mask, 3, torch.Generator().manual_seed(seed))
        for b in range(2):
            assert any(abs(s[b].item() - v) < 1e-6 for v in top3[b])
            seen[b].add(round(s[b].item(), 5))
    assert len(seen[0]) == 3 and len(seen[1]) == 2 and valid.all()  # every top region gets drawn
    best, _ = L.wpg_similarity(phrases, phrase_mask, regions, region_mask)
    assert torch.allclose(best, torch.stack([cos[0].max(), cos[1, :2].max()]))


def batch(n_regions=1, phrase_prob=1.0):
    rng = np.random.default_rng(0)
    caps = PIECES.captions(["a big wave near a boat", "a red kite over the sea"])
    items = [{"input_ids": c, "phrases": p, "tags": ["circle"], "image_index": i,
              "region_feats": rng.standard_normal((n_regions, 134)).astype(np.float32),
              "boxes": np.tile(np.array([0, 0, 10, 10], np.float32), (n_regions, 1)), "width": 9.0, "height": 9.0}
             for i, (c, p) in enumerate(zip(caps, [[0, 1], [2]]))]
    collate = Collator(PIECES, ["circle"], 3, 30522, CollateSettings(masking=Masking(phrases=phrase_prob)),
                       generator=torch.Generator().manual_seed(0))
    return collate(items)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MVPTR(load_config("tiny").model, 3, torch.tensor([[4418, 0]])).eval()


@pytest.mark.slow
def test_official_wpg_takes_a_random_other_image_and_keeps_masked_phrases(model):
    b = batch()  # one region per image (the draw among the top 3 has one choice), every phrase masked
    obj = dataclasses.replace(load_config("tiny").objectives, wpg_variant="official")
    paper = pretraining_losses(model, b, ["wpg"], load_config("tiny").objectives, torch.Generator().manual_seed(0))
    assert paper["wpg"].item() == 0.0  # the paper's WPG leaves masked phrases out: nothing to align
    with torch.no_grad():
        got = pretraining_losses(model, b, ["wpg"], obj, torch.Generator().manual_seed(0))["wpg"]
        text = model.encode_text(b["input_ids"], b["word_mask"], b["phrase_ids"], b["phrase_mask"])
        image = model.encode_image(b["tag_pieces"], b["tag_mask"], b["region_feats"], b["region_mask"])
        h = model.fuse(text.hidden, text.mask, image.region_hidden, image.region_mask,
                       (model.cfg.wpg_layer,)).layers[model.cfg.wpg_layer]
    n, m = text.num_words, text.phrase_hidden.shape[1]
    cos = torch.nn.functional.cosine_similarity

    def s(t, v):  # mean over text t's phrases of the cosine to image v's one region
        k = int(b["phrase_mask"][t].sum())
        return cos(h[t, n : n + k], h[v, n + m][None], dim=-1).mean()

    expected = sum(torch.relu(0.2 + s(t, 1 - t) - s(t, t)) for t in range(2)) / 2  # the other image: 1 - t
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_mcr_s_without_a_loss_still_masks_phrases(model):
    b = batch(n_regions=2, phrase_prob=0.5)
    obj = dataclasses.replace(load_config("tiny").objectives, mcr_s_loss=False)
    assert stage_masking(obj, ["mcr_s", "vsc"]).phrases > 0
    out = pretraining_losses(model, b, ["mcr_s", "vsc"], obj, torch.Generator().manual_seed(0))
    assert set(out) == {"vsc"}
    with pytest.raises(ValueError, match="wpg_variant"):
        pretraining_recipe("stage2", ["wpg"], dataclasses.replace(obj, wpg_variant="released"))
