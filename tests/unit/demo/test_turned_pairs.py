"""Turned pairs of the demo world: a scene and its half turn, every relation reversed."""

import json

import numpy as np
import pytest

from mvptr.demo.scenes import RELATIONS, SIDE_BY_SIDE, make_captions, relation, render_turned_pair
from mvptr.demo.world import generate_demo_world

OPPOSITE = {"above": "below", "below": "above", "left": "right", "right": "left"}


@pytest.mark.parametrize("seed", range(20))
def test_a_half_turn_keeps_the_shapes_and_reverses_every_relation(seed):
    rng = np.random.default_rng(seed)
    (img_a, objs_a), (img_b, objs_b) = render_turned_pair(rng, 96, 0.2)
    assert [(o.shape, o.color, o.size) for o in objs_a] == [(o.shape, o.color, o.size) for o in objs_b]
    assert not np.array_equal(img_a, img_b)
    for i in range(len(objs_a)):
        for j in range(len(objs_a)):
            if i != j:
                (rel_a, clear_a), (rel_b, _) = relation(objs_a[i], objs_a[j]), relation(objs_b[i], objs_b[j])
                # a tie between the two axes may fall either way after rounding to pixels
                if clear_a > 1.1:
                    assert rel_b == OPPOSITE[rel_a]


@pytest.mark.parametrize("seed", range(10))
def test_directional_captions_state_a_direction(seed):
    rng = np.random.default_rng(seed)
    (_, objs), _ = render_turned_pair(rng, 96, 0.0)
    directions = [w for words in RELATIONS.values() for w in words]
    for cap in make_captions(objs, rng, directional=True):
        assert any(f" {w} " in f" {cap.raw} " for w in directions), cap.raw
        assert not any(f" {w} " in cap.raw for w in SIDE_BY_SIDE), cap.raw


def test_a_world_with_turned_pairs_lists_them_and_keeps_other_splits_apart(tmp_path):
    world = generate_demo_world(tmp_path, n_train=20, n_val=4, n_test=4, detector_epochs=1, feat_dim=16,
                                turned_pairs=0.5, progress=False)
    groups = json.loads((tmp_path / "batch_groups.json").read_text())["groups"]
    assert world["turned_pairs"] == 5 and groups == [[f"{k:06d}", f"{k + 1:06d}"] for k in range(0, 10, 2)]


def test_a_world_without_turned_pairs_lists_no_groups(tmp_path):
    world = generate_demo_world(tmp_path, n_train=10, n_val=2, n_test=2, detector_epochs=1, feat_dim=16,
                                progress=False)
    assert world["turned_pairs"] == 0
    assert json.loads((tmp_path / "batch_groups.json").read_text()) == {"groups": []}
