"""`mvptr demo` parses a new world's phrases in a second process while its detector trains:
the files are those of parsing afterwards."""

import pytest

from mvptr.core.config import load_config
from mvptr.demo.run import prepare_data

pytestmark = pytest.mark.slow


def test_phrases_parsed_alongside_the_detector_match_the_world_already_made(world, tmp_path, capsys):
    new = tmp_path / "world"
    cfg = load_config("tiny", [
        f"demo.data_dir={new}", "demo.n_train=96", "demo.n_val=8", "demo.n_test=24", "data.phrase_min_count=2",
        f"data.captions={new}/captions.json", f"data.phrase_cache={new}/phrases/phrase_cache.jsonl",
        f"data.phrase_vocab={new}/phrases/phrase_vocab.json",
    ])
    cfg.demo.world_seed = 0
    seconds = {}
    prepare_data(cfg, seconds)
    assert set(seconds) == {"prepare", "phrases"}
    assert "in a second process while the detector trains" in capsys.readouterr().out
    # the session's tiny world is the same world (seed 0, same sizes) with phrases parsed afterwards
    for name in ("captions.json", "phrases/phrase_vocab.json", "phrases/phrase_cache.jsonl"):
        assert (new / name).read_bytes() == (world / name).read_bytes(), name
