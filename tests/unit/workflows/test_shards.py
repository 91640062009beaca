"""--shard I/N for phrases, feature extraction and store conversion; merge-shards gives the unsharded output."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mvptr.text.phrases as phrases_module
from mvptr.cli import main
from mvptr.core.shards import shard_part
from mvptr.formats.captions import write_karpathy_json
from mvptr.formats.tsv import TSVFile, concat_tsv
from mvptr.formats.vinvl import write_vinvl_features, write_vinvl_predictions
from mvptr.text.phrases import PhraseExtractor, prepare_phrases
from mvptr.vision.demo_detector import DemoDetector


def _files(d: Path) -> dict:
    """Every file of an output directory (not the shard directories, nor the run's .lock), by name."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != ".lock"}


def test_shares_are_contiguous_cover_everything_once_and_reject_a_bad_index():
    for n in (0, 1, 5, 7):
        for count in (1, 2, 3, 8):
            parts = [shard_part(list(range(n)), (i, count)) for i in range(count)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard_part([1, 2], (2, 2))


@pytest.mark.parametrize("value", ["2/2", "-1/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["features", "extract", "--images", str(tmp_path), "--out", str(tmp_path), f"--shard={value}"])
    assert exc.value.code == 2 and "0 <= I < N" in capsys.readouterr().err


def test_concatenated_tsv_parts_read_back_row_for_row(tmp_path):
    write_vinvl_predictions(tmp_path / "a.tsv", [("1", {"objects": []}), ("2", {"objects": []})])
    (tmp_path / "b.tsv").write_bytes(b'3\t{"objects": []}')  # its last row without a newline
    (tmp_path / "b.lineidx").write_text("0\n")
    assert concat_tsv([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "all.tsv") == 3
    tsv = TSVFile(tmp_path / "all.tsv")
    assert [tsv.row(i)[0] for i in range(3)] == ["1", "2", "3"]


# --------------------------------------------------------------------------- phrases

CAPTIONS = [["a man riding a big wave", "a big wave"], ["two green squares", "a big red circle"],
            ["a small blue triangle"], ["a big wave near a man"], ["a red circle above a square"]]


@pytest.fixture(scope="module")
def extractor():
    return PhraseExtractor()


def test_phrase_shards_merge_to_the_unsharded_cache_and_vocabulary(extractor, tmp_path, monkeypatch, capsys):
    captions = tmp_path / "captions.json"
    write_karpathy_json(captions, [{"filename": f"{k}.jpg", "imgid": k, "split": "train", "sentences": s}
                                   for k, s in enumerate(CAPTIONS)])
    prepare_phrases(captions, tmp_path / "whole", min_count=2, extractor=extractor)
    monkeypatch.setattr(phrases_module, "PhraseExtractor", lambda: extractor)
    out = tmp_path / "sharded"
    for i in (2, 0, 1):  # in any order, as a launcher may finish them
        assert main(["prepare", "phrases", "--captions", str(captions), "--out", str(out), "--min-count", "2",
                     "--shard", f"{i}/3"]) == 0
    assert not (out / "phrase_vocab.json").exists() and not (out / "shard-0-of-3" / "phrase_vocab.json").exists()
    capsys.readouterr()

    parsed = []
    monkeypatch.setattr(extractor, "extract", lambda texts, **kw: parsed.extend(texts))
    assert main(["merge-shards", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["captions"] == 7
    assert parsed == []  # the merge parses nothing
    whole, merged = _files(tmp_path / "whole"), _files(out)
    assert merged["phrase_cache.jsonl"] == whole["phrase_cache.jsonl"]
    assert merged["phrase_vocab.json"] == whole["phrase_vocab.json"]
    # a second merge would overwrite a finished output
    assert main(["merge-shards", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_merge_refuses_missing_unfinished_and_mismatched_shards(extractor, tmp_path, monkeypatch, capsys):
    captions = tmp_path / "captions.json"
    write_karpathy_json(captions, [{"filename": f"{k}.jpg", "imgid": k, "split": "train", "sentences": s}
                                   for k, s in enumerate(CAPTIONS)])
    monkeypatch.setattr(phrases_module, "PhraseExtractor", lambda: extractor)
    out = tmp_path / "out"
    assert main(["merge-shards", str(out)]) == 2
    assert "no shard-I-of-N directories" in capsys.readouterr().err

    run = lambda i, *extra: main(["prepare", "phrases", "--captions", str(captions), "--out", str(out),
                                  "--shard", f"{i}/2", *extra])
    assert run(0) == 0
    assert main(["merge-shards", str(out)]) == 2
    assert "shard 1/2 missing" in capsys.readouterr().err

    assert run(1, "--min-count", "3") == 0  # other settings than shard 0
    assert main(["merge-shards", str(out)]) == 2
    assert "other inputs or settings" in capsys.readouterr().err

    (out / "shard-1-of-2" / "shard.json").unlink()  # as if it were killed
    assert main(["merge-shards", str(out)]) == 2
    assert "shard not finished" in capsys.readouterr().err
    assert run(1) == 0 and main(["merge-shards", str(out)]) == 0


# --------------------------------------------------------------------------- features extract

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_images")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        pixels = np.full((40, 48, 3), 200, dtype=np.uint8)
        for _ in range(k % 3):
            x, y = rng.integers(0, 30, 2)
            pixels[y:y + 8, x:x + 10] = (220, 30, 30)
        Image.fromarray(pixels).save(root / "images" / f"img{k}.png")
    torch.manual_seed(0)
    DemoDetector(["circle", "square"], ["red", "blue"], ["small", "big"], feat_dim=8).save(root / "det.safetensors")
    return root


def test_extract_shards_merge_to_the_unsharded_files(images, tmp_path, capsys):
    # one image per detector call: a batch's make-up must not change the float results compared
    args = ["features", "extract", "--images", str(images / "images"), "--weights", str(images / "det.safetensors"),
            "--batch-size", "1"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    for i in range(2):
        assert main([*args, "--out", str(tmp_path / "sharded"), "--shard", f"{i}/2"]) == 0
    assert json.loads((tmp_path / "sharded" / "shard-1-of-2" / "shard.json").read_text())["items"] == 2
    assert main(["merge-shards", str(tmp_path / "sharded")]) == 0
    whole, merged = _files(tmp_path / "whole"), _files(tmp_path / "sharded")
    assert set(whole) == {"features.tsv", "features.lineidx", "predictions.tsv", "predictions.lineidx",
                          "imageid2idx.json"}
    assert merged == whole


# --------------------------------------------------------------------------- features convert

def _vinvl_pair(root: Path, n: int = 7, dim: int = 5):
    """A TSV pair whose images list classes in different first-seen orders, one with no regions."""
    rng = np.random.default_rng(1)
    names = ["dog", "cat", "car", "tree"]
    feats, preds = [], []
    for k in range(n):
        count = 0 if k == 3 else 1 + k % 3
        classes = [names[(k * 3 + j) % 4] for j in range(count)]
        feats.append((f"{100 + k}", rng.normal(size=(count, dim)).astype(np.float32)))
        preds.append((f"{100 + k}", {"image_h": 50, "image_w": 60, "num_boxes": count,
                                     "objects": [{"rect": [1.0, 2.0, 30.5, 40.0], "class": c, "conf": 0.5 + j / 10}
                                                 for j, c in enumerate(classes)]}))
    write_vinvl_features(root / "features.tsv", feats)
    write_vinvl_predictions(root / "predictions.tsv", preds)


def test_convert_shards_merge_to_the_unsharded_store(tmp_path, capsys):
    _vinvl_pair(tmp_path)
    args = ["features", "convert", "--features", str(tmp_path / "features.tsv"),
            "--predictions", str(tmp_path / "predictions.tsv")]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    for i in range(3):
        assert main([*args, "--out", str(tmp_path / "sharded"), "--shard", f"{i}/3"]) == 0
    classes = lambda d: json.loads((tmp_path / d / "classes.json").read_text())
    # a shard numbers its classes itself: "cat" is 1 in shard 1 and 3 in the whole store
    assert classes("sharded/shard-1-of-3") == ["dog", "cat"] and classes("whole") == ["dog", "tree", "car", "cat"]
    capsys.readouterr()
    assert main(["merge-shards", str(tmp_path / "sharded")]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 7
    whole, merged = _files(tmp_path / "whole"), _files(tmp_path / "sharded")
    assert len(whole) == 9 and merged == whole
