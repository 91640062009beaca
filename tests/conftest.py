"""Shared fixtures: one tiny demo world for the tests that need data on disk."""

import pytest

from mvptr.demo.world import generate_demo_world
from mvptr.text.phrases import prepare_phrases


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_demo_world(root, n_train=96, n_val=8, n_test=24, seed=0, detector_epochs=1, progress=False)
    prepare_phrases(root / "captions.json", root / "phrases", min_count=2)
    return root


@pytest.fixture(scope="session")
def world_args(world):
    """Config overrides that point a run at the tiny world and write to ``out``."""
    return lambda out: [
        f"out_dir={out}",
        f"demo.data_dir={world}",
        "demo.n_train=96", "demo.n_val=8", "demo.n_test=24",  # the world's sizes: another world is refused
        f"data.captions={world}/captions.json",
        f"data.features={world}/features.tsv",
        f"data.predictions={world}/predictions.tsv",
        f"data.phrase_cache={world}/phrases/phrase_cache.jsonl",
        f"data.phrase_vocab={world}/phrases/phrase_vocab.json",
        f"eval.entities_dir={world}/flickr30k_entities",
    ]


