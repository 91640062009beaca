"""--skip-bad: every kind of bad sample stops a run by default, and is skipped and counted with it."""

import json
import re

import numpy as np
import pytest

from helpers import DIM, IDS, VOCAB, _prediction, captions_of, parsed, phrase_records, write_corpus
from mvptr.cli import main
from mvptr.core.config import DataConfig
from mvptr.core.errors import FormatError, SkippedSamples
from mvptr.data.grounding import grounding_examples
from mvptr.data.pretrain import build_pair_dataset
from mvptr.formats.entities import write_flickr30k_entities
from mvptr.formats.phrase_cache import write_phrase_cache
from mvptr.formats.tsv import build_lineidx
from mvptr.text.phrases import prepare_phrases
from mvptr.text.tokenizer import WordPieces, load_tokenizer

BAD = "3"  # the image each case spoils


def _edit_line(path, image_id, new):
    """Replace (or with None delete) the line of ``image_id`` and rebuild the .lineidx."""
    lines = path.read_text().split("\n")[:-1]
    k = next(n for n, line in enumerate(lines) if line.split("\t")[0] == image_id)
    lines[k:k + 1] = [] if new is None else [new]
    path.write_text("\n".join(lines) + "\n")
    build_lineidx(path)
    return k + 1  # 1-based line number


def _spoil(root, case):
    """Spoil image BAD (or one caption of it) in one way; returns (file named, samples lost)."""
    feats, preds = root / "features.tsv", root / "predictions.tsv"
    if case == "truncated row":
        line = _edit_line(feats, BAD, f"{BAD}\t3")
        return f"{feats} line {line}", 2
    if case == "bad base64":
        line = _edit_line(feats, BAD, f"{BAD}\t3\tnot*base64")
        return f"{feats} line {line}", 2
    if case == "wrong feature width":
        import base64
        data = base64.b64encode(np.zeros((3, DIM - 4), dtype="<f4").tobytes()).decode()
        line = _edit_line(feats, BAD, f"{BAD}\t3\t{data}")
        return f"{feats} line {line}", 2
    if case == "non-finite features":
        import base64
        x = np.ones((3, DIM), dtype="<f4")
        x[1, 7] = np.nan
        line = _edit_line(feats, BAD, f"{BAD}\t3\t{base64.b64encode(x.tobytes()).decode()}")
        return f"{feats} line {line} (image {BAD}): 1 feature values are NaN or inf (first: box 1, value 7)", 2
    if case == "huge features":
        import base64
        x = np.ones((3, DIM), dtype="<f4")
        x[1, 7] = 1e30  # finite, yet no detector gives it
        line = _edit_line(feats, BAD, f"{BAD}\t3\t{base64.b64encode(x.tobytes()).decode()}")
        return f"{feats} line {line} (image {BAD}): 1 feature values beyond +-10000", 2
    if case == "box outside image":
        pred = _prediction(3)
        pred["objects"][1]["rect"] = [50, 10, 140, 30]  # the image is 100 wide
        line = _edit_line(preds, BAD, f"{BAD}\t{json.dumps(pred)}")
        return f"{preds} line {line}", 2
    if case == "image not found":
        _edit_line(feats, BAD, None)
        return f"{feats}: image {BAD}", 2
    if case == "empty caption":
        data = json.loads((root / "captions.json").read_text())
        data["images"][IDS.index(BAD)]["sentences"][1]["raw"] = "  "
        (root / "captions.json").write_text(json.dumps(data))
        return f"{root / 'captions.json'} (image {BAD}, sentence 1)", 1
    if case == "bad caption entry":
        data = json.loads((root / "captions.json").read_text())
        data["images"][IDS.index(BAD)]["sentences"][0] = "not an object"
        (root / "captions.json").write_text(json.dumps(data))
        return f"{root / 'captions.json'} (image {BAD}, sentence 0)", 1
    if case == "no phrases":
        lines = (root / "phrase_cache.jsonl").read_text().splitlines(keepends=True)
        key = json.dumps(captions_of(BAD)[0])
        (root / "phrase_cache.jsonl").write_text("".join(line for line in lines if key not in line))
        return f"{root / 'phrase_cache.jsonl'}: no phrases for", 1
    raise AssertionError(case)


CASES = ["truncated row", "bad base64", "wrong feature width", "non-finite features", "huge features",
         "box outside image",
         "image not found", "empty caption", "bad caption entry", "no phrases"]


def _data(root, **kw):
    return DataConfig(captions=str(root / "captions.json"), features=str(root / "features.tsv"),
                      predictions=str(root / "predictions.tsv"), phrase_cache=str(root / "phrase_cache.jsonl"),
                      max_regions=10, max_tags=8, **kw)


@pytest.fixture(scope="module")
def pieces():
    return WordPieces(load_tokenizer(), 16)


def _build(root, pieces, skip=None):
    return build_pair_dataset(_data(root), pieces, VOCAB, DIM, "train", skip=skip)


@pytest.mark.parametrize("case", CASES)
def test_bad_sample_raises_without_the_flag(tmp_path, pieces, case):
    root = write_corpus(tmp_path / "c")
    where, _ = _spoil(root, case)
    with pytest.raises(FormatError, match=re.escape(where)) as err:
        ds = _build(root, pieces)
        for i in range(len(ds)):  # bad feature rows are met when the sample is read
            ds[i]
    assert err.value.reason == case


@pytest.mark.parametrize("case", CASES)
def test_bad_sample_is_skipped_and_counted_with_the_flag(tmp_path, pieces, case):
    root = write_corpus(tmp_path / "c")
    where, lost = _spoil(root, case)
    skipped = SkippedSamples()
    ds = _build(root, pieces, skipped)
    assert len(ds) == 2 * len(IDS) - lost
    for i in range(len(ds)):
        ds[i]  # every remaining sample reads
    summary = skipped.summary()
    assert summary["skipped_samples"] == lost and list(summary["by_reason"]) == [case]
    assert where in summary["by_reason"][case]["first"][0]
    assert BAD in ds.image_index if lost == 1 else BAD not in ds.image_index
    assert ds.corpus_counts == {"data": {"captions": len(ds), "images": len(ds.image_index)}}
    assert f"{case}: {lost} samples" in skipped.report()
    skipped.save(tmp_path / "skipped.json")
    saved = json.loads((tmp_path / "skipped.json").read_text())
    assert saved["skipped_samples"] == lost and saved["entries"][0]["reason"] == case


def test_duplicate_feature_row(tmp_path, pieces):
    root = write_corpus(tmp_path / "c")
    with open(root / "features.tsv", "a") as f:
        f.write((root / "features.tsv").read_text().split("\n")[2] + "\n")  # image 3 again
    build_lineidx(root / "features.tsv")
    with pytest.raises(FormatError, match=r"features\.tsv line 9: image 3 already appears on line 3"):
        _build(root, pieces)
    skipped = SkippedSamples()
    assert len(_build(root, pieces, skipped)) == 16  # the first row is kept
    assert skipped.summary()["by_reason"]["duplicate image"] == {
        "problems": 1, "samples": 0, "first": [f"{root / 'features.tsv'} line 9: image 3 already appears on line 3"]}


def test_bad_phrase_cache_line(tmp_path, pieces):
    root = write_corpus(tmp_path / "c")
    lines = (root / "phrase_cache.jsonl").read_text().splitlines(keepends=True)
    lines[4] = json.dumps({"caption": captions_of(BAD)[0], "phrases": "oops"}) + "\n"  # image 3, sentence 0
    (root / "phrase_cache.jsonl").write_text("".join(lines))
    with pytest.raises(FormatError, match=r"phrase_cache\.jsonl line 5"):
        _build(root, pieces)
    skipped = SkippedSamples()
    assert len(_build(root, pieces, skipped)) == 15
    # the bad line, and then its caption, which has no phrases
    assert {r: v["samples"] for r, v in skipped.summary()["by_reason"].items()} == {
        "bad phrase record": 1, "no phrases": 1}


def _entities(root):
    write_flickr30k_entities(root, "1", [("a red circle".split(), [(0, 3, "5")])], {"5": [[1, 1, 9, 9]]}, 100, 80)
    write_flickr30k_entities(root, "2", [("a blue square".split(), [(0, 3, "6")])], {"6": [[2, 2, 9, 9]]}, 100, 80)


def _examples(root, skip=None):
    return grounding_examples(root, ["1", "2"], load_tokenizer(), 16, lambda i, t: [], skip=skip)


def test_malformed_entities_xml(tmp_path):
    _entities(tmp_path)
    assert len(_examples(tmp_path)) == 2
    (tmp_path / "Annotations" / "2.xml").write_text("<annotation><size>")
    with pytest.raises(FormatError, match=re.escape(str(tmp_path / "Annotations" / "2.xml")) + ": malformed XML"):
        _examples(tmp_path)
    skipped = SkippedSamples()
    assert [e["image_id"] for e in _examples(tmp_path, skipped)] == ["1"]
    assert list(skipped.summary()["by_reason"]) == ["malformed XML"]


def test_bad_entities_sentence_line(tmp_path):
    _entities(tmp_path)
    sentences = tmp_path / "Sentences" / "1.txt"
    sentences.write_text(sentences.read_text() + "[/EN#7/other a broken phrase\n")
    with pytest.raises(FormatError, match=re.escape(str(sentences)) + " line 2"):
        _examples(tmp_path)
    skipped = SkippedSamples()
    assert len(_examples(tmp_path, skipped)) == 2
    assert skipped.summary()["by_reason"]["bad entity sentence"]["samples"] == 1


def test_features_convert_skip_bad(tmp_path, capsys):
    root = write_corpus(tmp_path / "c")
    where, _ = _spoil(root, "bad base64")
    args = ["features", "convert", "--features", str(root / "features.tsv"),
            "--predictions", str(root / "predictions.tsv")]
    assert main([*args, "--out", str(tmp_path / "store")]) == 2  # a user error: one line on stderr, exit status 2
    assert re.search(re.escape(where) + ".*base64", capsys.readouterr().err)
    assert not (tmp_path / "store").exists()
    assert main([*args, "--out", str(tmp_path / "store"), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["num_images"] == len(IDS) - 1
    assert "skipped 1 samples" in err and "bad base64" in err
    saved = json.loads((tmp_path / "store" / "skipped.json").read_text())
    assert saved["by_reason"]["bad base64"]["first"][0].startswith(where)
    from mvptr.vision.stores import MemmapStore
    assert BAD not in MemmapStore(tmp_path / "store") and "4" in MemmapStore(tmp_path / "store")


class _Extractor:
    def extract(self, captions, **kw):
        return [parsed(c, [("circle", "red")]) for c in captions]


def test_prepare_phrases_skip_bad(tmp_path):
    root = write_corpus(tmp_path / "c")
    _spoil(root, "empty caption")
    with pytest.raises(FormatError, match="image 3, sentence 1"):
        prepare_phrases(root / "captions.json", tmp_path / "p", min_count=1, extractor=_Extractor())
    skipped = SkippedSamples()
    stats = prepare_phrases(root / "captions.json", tmp_path / "p", min_count=1, extractor=_Extractor(),
                            skip=skipped)
    assert stats["num_texts"] == 15 and skipped.summary()["by_reason"]["empty caption"]["samples"] == 1


def test_prepare_phrases_command_line_skip_bad(tmp_path, capsys):
    root = write_corpus(tmp_path / "c")
    _spoil(root, "bad caption entry")
    (tmp_path / "p").mkdir()
    write_phrase_cache(tmp_path / "p" / "phrase_cache.jsonl", phrase_records(IDS))
    args = ["prepare", "phrases", "--captions", str(root / "captions.json"), "--out", str(tmp_path / "p"),
            "--min-count", "1"]
    assert main(args) == 2  # a user error: one line on stderr, exit status 2
    assert re.search("image 3, sentence 0", capsys.readouterr().err)
    assert main([*args, "--skip-bad"]) == 0  # every good caption is cached: no parser needed
    assert json.loads(capsys.readouterr().out)["num_texts"] == 15
    assert json.loads((tmp_path / "p" / "skipped.json").read_text())["skipped_samples"] == 1


@pytest.mark.slow
def test_pretrain_command_line_skip_bad(tmp_path, capsys):
    root = write_corpus(tmp_path / "c")
    where, _ = _spoil(root, "box outside image")
    VOCAB.save(tmp_path / "vocab.json")
    args = ["pretrain", "--config", "tiny", "--stage", "stage1", f"out_dir={tmp_path / 'run'}",
            f"data.captions={root / 'captions.json'}", f"data.features={root / 'features.tsv'}",
            f"data.predictions={root / 'predictions.tsv'}", f"data.phrase_cache={root / 'phrase_cache.jsonl'}",
            f"data.phrase_vocab={tmp_path / 'vocab.json'}", "stage1.batch_size=4", "stage1.max_steps=1"]
    assert main(args) == 2
    assert re.search(re.escape(where) + ".*--skip-bad leaves such samples out", capsys.readouterr().err)
    assert main([*args, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 samples" in err and "box outside image" in err
    run = tmp_path / "run" / "stage1"
    assert json.loads((run / "skipped.json").read_text())["by_reason"]["box outside image"]["samples"] == 2
    assert json.loads((run / "data.json").read_text()) == {
        "split": "train", "samples": 14, "corpora": {"data": {"captions": 14, "images": 7}}, "skipped": 2}
    # evaluation of that model on the same spoilt data, plus a malformed Entities file
    _entities(tmp_path / "entities")
    (tmp_path / "entities" / "Annotations" / "2.xml").write_text("<annotation><size>")
    ev = ["evaluate", "--model", str(run / "model"), "--config", "tiny", *args[5:-2], "eval.split=train",
          f"eval.entities_dir={tmp_path / 'entities'}"]
    capsys.readouterr()
    assert main(ev) == 2
    assert "lies outside the 100x80 image" in capsys.readouterr().err
    assert main([*ev, "--skip-bad"]) == 0
    saved = json.loads((run / "skipped.json").read_text())
    assert {r: v["samples"] for r, v in saved["by_reason"].items()} == {"box outside image": 2, "malformed XML": 1}
    assert json.loads((run / "eval.json").read_text())["skipped"] == 3
