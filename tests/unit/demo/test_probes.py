"""The demo world's compositional probes: each false caption differs from the true one only
where it should and is false in its scene; a bag-of-words or constant scorer passes none."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import save_model_dir
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.demo.probe_images import GROUP_KINDS, group_scenes
from mvptr.demo.probes import PAIR_KINDS, CaptionIndex, image_probes
from mvptr.demo.scenes import RELATIONS, SIZE_WORDS, relation, render_scene
from mvptr.eval.probes import GROUP_CHANCE, PAIR_CHANCE, ProbeSet, score_probes
from mvptr.text.phrases import PhraseVocab

WORDINGS = {w: rel for rel, words in RELATIONS.items() for w in words}


def _read(words):
    """(subject (size word, colour, shape), relation, object) of "a S C X <relation> a S C X"."""
    assert words[0] == words[-4] == "a"
    return tuple(words[1:4]), WORDINGS[" ".join(words[4:-4])], tuple(words[-3:])


def _find(objects, mention):
    size_word, color, shape = mention
    return [o for o in objects if o.color == color and o.shape == shape and size_word in SIZE_WORDS[o.size]]


def _true_in(objects, words) -> bool:
    """Computed from the geometry, apart from the module's own check."""
    subject, rel, obj = _read(words)
    return any(a is not b and relation(a, b)[0] == rel for a in _find(objects, subject) for b in _find(objects, obj))


def _scenes(n=150):
    rng = np.random.default_rng(5)
    return [render_scene(rng)[1] for _ in range(n)]


def test_each_false_caption_differs_only_where_it_should_and_is_false():
    rng = np.random.default_rng(0)
    made = Counter()
    for objects in _scenes():
        probes = image_probes(objects, rng)
        if probes is None:  # no two shapes in a clear relation
            assert all(relation(a, b)[1] < 1.5 for a in objects for b in objects if a is not b)
            continue
        true, false = probes
        assert _true_in(objects, true)
        made.update(false.keys())
        swap = false["relation_swap"]
        assert sorted(swap) == sorted(true) and swap != true and not _true_in(objects, swap)
        assert _read(swap) == (_read(true)[2], _read(true)[1], _read(true)[0])
        if "attribute_swap" in false:
            attr = false["attribute_swap"]
            changed = [k for k, (a, b) in enumerate(zip(true, attr)) if a != b]
            # two words exchanged: both colours (positions 2 and -2) or both sizes (1 and -3)
            assert changed in ([2, len(true) - 2], [1, len(true) - 3])
            p, q = changed
            assert (attr[p], attr[q]) == (true[q], true[p])
            subject, _, obj = _read(attr)
            assert not (_find(objects, subject) and _find(objects, obj))  # no such pair of shapes at all
        shuffled = false["word_shuffle"]
        assert sorted(shuffled) == sorted(true) and shuffled != true
    assert made["relation_swap"] == made["word_shuffle"] > 100 and made["attribute_swap"] > 80


@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_winoground_groups_are_word_permutations_each_true_of_its_own_image(kind):
    rng = np.random.default_rng(1)
    for _ in range(15):
        images, objects, captions = group_scenes(rng, kind)
        w0, w1 = captions[0].words, captions[1].words
        assert sorted(w0) == sorted(w1) and w0 != w1
        for k in (0, 1):
            assert len(objects[k]) == 2 and images[k].shape == (96, 96, 3) and images[k].dtype == np.uint8
            assert _true_in(objects[k], captions[k].words) and not _true_in(objects[1 - k], captions[k].words)
        if kind == "winoground_attribute":  # same shapes, same places, colours exchanged
            assert [o.shape for o in objects[0]] == [o.shape for o in objects[1]]
            assert [o.color for o in objects[0]] == [o.color for o in objects[1]][::-1]
        else:  # the same two shapes, their places exchanged
            assert {(o.shape, o.color) for o in objects[0]} == {(o.shape, o.color) for o in objects[1]}


def _probe_set():
    """The pair probes of rendered scenes and a few groups of each kind (no regions needed)."""
    rng = np.random.default_rng(2)
    captions, n_images = CaptionIndex(), 0
    pairs = {k: [] for k in PAIR_KINDS}
    for objects in _scenes(60):
        probes = image_probes(objects, rng)
        if probes is not None:
            for kind, words in probes[1].items():
                pairs[kind].append((n_images, captions(probes[0]), captions(words)))
            n_images += 1
    groups = {k: [] for k in GROUP_KINDS}
    for kind in GROUP_KINDS:
        for _ in range(10):
            _, _, (c0, c1) = group_scenes(rng, kind)
            groups[kind].append((n_images, n_images + 1, captions(c0.words), captions(c1.words)))
            n_images += 2
    return ProbeSet(captions.texts, [{}] * n_images, pairs, groups)


def test_a_bag_of_words_scorer_and_a_constant_scorer_never_beat_chance():
    probes = _probe_set()
    bags = [" ".join(sorted(t.lower().rstrip(".").split())) for t in probes.captions]
    values = {b: float(i) for i, b in enumerate(sorted(set(bags)))}

    def bag_of_words(pairs):  # a function of the image and of the caption's word multiset only
        return torch.tensor([values[bags[int(c)]] + 0.1 * int(i) for i, c in pairs])

    for scorer in (bag_of_words, lambda pairs: torch.zeros(len(pairs))):
        result = score_probes(scorer, probes)
        for kind in PAIR_KINDS:
            r = result[kind]
            # every pair probe has one word multiset: all ties, and a tie fails (ARO's convention)
            assert r["n"] == len(probes.pairs[kind]) > 0 and r["ties"] == r["n"]
            assert r["acc"] == 0.0 <= PAIR_CHANCE == r["chance"]
        for kind in GROUP_KINDS:
            assert all(result[kind][s]["acc"] == 0.0 <= GROUP_CHANCE[s] for s in ("text", "image", "group"))
    # the true captions told apart by their words alone (a scorer that is not a bag of words) pass
    true = {c for rows in probes.pairs.values() for _, c, _ in rows}
    oracle = score_probes(lambda pairs: torch.tensor([float(int(c) in true) for _, c in pairs]), probes)
    assert all(oracle[k]["acc"] == 100.0 for k in PAIR_KINDS)


@pytest.mark.slow
def test_evaluate_probes_through_the_cli(world, world_args, tmp_path, capsys):
    cfg = load_config("tiny", world_args(tmp_path))
    model = save_model_dir(tmp_path / "model", new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab),
                                                          training_tag_vocab(cfg)))
    args = ["evaluate", "probes", "--model", str(model), "--out", str(tmp_path / "eval"), "--config", "tiny",
            *world_args(tmp_path), "demo.probe_groups=3", "threads=1"]
    assert main(args) == 0
    result = json.loads((tmp_path / "eval" / "probes.json").read_text())
    assert "relation_swap" in capsys.readouterr().out
    counts = result["counts"]
    assert counts["relation_swap"] == counts["word_shuffle"] > 10 and counts["winoground_relation"] == 3
    for scorer in ("itm", "cosine"):
        for kind in PAIR_KINDS:
            r = result[scorer][kind]
            assert r["n"] == counts[kind] and r["chance"] == 50.0 and 0 <= r["acc"] <= 100
            assert r["ci95"][0] <= r["acc"] <= r["ci95"][1]
        for kind in GROUP_KINDS:
            assert result[scorer][kind]["group"]["n"] == 3
    # the same probes every time
    assert main(args) == 0
    assert json.loads((tmp_path / "eval" / "probes.json").read_text()) == result
    # a directory that is no demo world: one line, exit 2
    capsys.readouterr()
    assert main([*args, f"demo.data_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "world.json" in err and len(err.splitlines()) == 1
    assert main([*args, "demo.probe_groups=-1"]) == 2
    assert "demo.probe_groups=-1" in capsys.readouterr().err
