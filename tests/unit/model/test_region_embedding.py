"""model.region_box: how a region's features and box numbers are embedded."""

import pytest
import torch

from mvptr.core.config import ModelConfig
from mvptr.core.errors import ConfigError
from mvptr.model.modeling import MVPTR, RegionEmbedding


def _cfg(**kw):
    return ModelConfig(hidden_size=32, num_heads=2, intermediate_size=64, text_layers=1, visual_layers=1,
                       multimodal_layers=1, vocab_size=50, region_feat_dim=134, embed_dim=16, **kw)


def _regions(n=64, scale=3.0, seed=0):
    """Region vectors like the demo detector's: ReLU features of a few units, then 6 box numbers in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([scale * torch.rand(n, 128, generator=g), torch.rand(n, 6, generator=g)], 1)


def _share_of_box(embed: torch.nn.Module, feats: torch.Tensor) -> float:
    """How far moving only the box moves the embedding, against moving only the features."""
    other = _regions(len(feats), seed=1)
    box_moved = torch.cat([feats[:, :-6], other[:, -6:]], 1)
    feats_moved = torch.cat([other[:, :-6], feats[:, -6:]], 1)
    with torch.no_grad():
        base = embed(feats)
        return ((embed(box_moved) - base).norm(dim=1).mean() / (embed(feats_moved) - base).norm(dim=1).mean()).item()


def test_separate_embedding_gives_the_box_a_share_like_the_features_where_one_linear_drowns_it():
    torch.manual_seed(0)
    feats = _regions()
    separate = _share_of_box(RegionEmbedding(_cfg()), feats)
    concat = _share_of_box(torch.nn.Linear(134, 32), feats)
    # one Linear: the ratio is about sqrt(6 var(box)) / sqrt(128 var(features)) = 1/sqrt(192) = 0.07;
    # separate: two LayerNorm'd parts of equal size, a ratio of order 1
    assert concat < 0.15 and separate > 0.4, (concat, separate)


def test_the_model_builds_each_region_box_and_refuses_another():
    tags = torch.zeros(3, 1, dtype=torch.long)
    assert isinstance(MVPTR(_cfg(region_box="separate"), 4, tags).region_embed, RegionEmbedding)
    assert isinstance(MVPTR(_cfg(), 4, tags).region_embed, torch.nn.Linear)
    with pytest.raises(ConfigError, match="model.region_box"):
        MVPTR(_cfg(region_box="sum"), 4, tags)


def test_separate_embedding_reads_the_last_six_numbers_as_the_box():
    embed = RegionEmbedding(_cfg())
    feats = _regions(4)
    with torch.no_grad():
        expected = embed.features_norm(embed.features(feats[:, :128])) + embed.box_norm(embed.box(feats[:, 128:]))
        assert torch.allclose(embed(feats), expected)
