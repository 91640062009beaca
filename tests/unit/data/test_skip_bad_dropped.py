"""Records that were once left out without a word: each is an error naming its file and entry,
or with --skip-bad left out and counted by reason in skipped.json."""

import json
import re

import numpy as np
import pytest

from helpers import DIM, write_corpus
from mvptr.core.errors import FormatError, SkippedSamples
from mvptr.data.grounding import grounding_examples
from mvptr.data.pretrain import ImageSource
from mvptr.data.tasks import TaskImages, VEDataset, VQADataset
from mvptr.formats.captions import read_captions
from mvptr.formats.snli_ve import read_snli_ve
from mvptr.formats.vinvl import VinVLFeatures, write_vinvl_features
from mvptr.formats.vqa import VQAQuestion
from mvptr.text.tokenizer import WordPieces, load_tokenizer

XML = ("<annotation><size><width>100</width><height>80</height><depth>3</depth></size>"
       "<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>11</xmax><ymax>13</ymax></bndbox></object>"
       "</annotation>")


@pytest.fixture(scope="module")
def pieces():
    return WordPieces(load_tokenizer(), 16)


def _saved(skipped, tmp_path, reason, samples):
    skipped.save(tmp_path / "skipped.json")
    saved = json.loads((tmp_path / "skipped.json").read_text())
    assert saved["skipped_samples"] == samples
    assert list(saved["by_reason"]) == [reason] and saved["by_reason"][reason]["samples"] == samples
    return saved["entries"][0]["message"]


@pytest.mark.parametrize("split, reason", [(None, "null split"), ("", "null split"), ("tran", "unknown split")])
def test_an_image_without_a_known_split_is_an_error_or_counted(tmp_path, split, reason):
    root = write_corpus(tmp_path / "c")
    doc = json.loads((root / "captions.json").read_text())
    doc["images"][2]["split"] = split
    (root / "captions.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=re.escape(f"{root / 'captions.json'} (images[2])")) as err:
        read_captions(root / "captions.json", ["train"])
    assert err.value.reason == reason
    skipped = SkippedSamples()
    records = read_captions(root / "captions.json", ["train"], skip=skipped)
    assert len(records) == 2 * (len(doc["images"]) - 1)
    assert "images[2]" in _saved(skipped, tmp_path, reason, 2)  # both captions of the image


def test_a_missing_sentences_file_is_an_error_or_counted(tmp_path):
    d = tmp_path / "entities"
    (d / "Sentences").mkdir(parents=True)
    (d / "Annotations").mkdir(parents=True)
    (d / "Annotations" / "4.xml").write_text(XML)
    args = (d, ["4", "5"], load_tokenizer(), 16, lambda *_: [])  # image 5 has neither file: no entities
    with pytest.raises(FormatError, match=re.escape(str(d / "Sentences" / "4.txt"))) as err:
        grounding_examples(*args)
    assert err.value.reason == "no sentences file"
    skipped = SkippedSamples()
    assert grounding_examples(*args, skip=skipped) == []
    assert "image 4" in _saved(skipped, tmp_path, "no sentences file", 1)


def _images(tmp_path):
    root = write_corpus(tmp_path / "c", ids=["1", "2"])
    return TaskImages(ImageSource(str(root / "features.tsv"), str(root / "predictions.tsv"), DIM, 10, 8))


def test_a_vqa_question_of_an_image_without_features_is_an_error_or_counted(tmp_path, pieces):
    questions = [VQAQuestion(10, "1", "what?", ["red"], source="q.json"),
                 VQAQuestion(11, "99", "which?", ["blue"], source="q.json")]
    images = _images(tmp_path)
    with pytest.raises(FormatError, match=r"q\.json \(question 11\): its image has no region features .*image: 99"):
        VQADataset(questions, images, pieces, ["red", "blue"])
    skipped = SkippedSamples()
    data = VQADataset(questions, images, pieces, ["red", "blue"], skip=skipped)
    assert [q.question_id for q in data.questions] == [10]
    assert "question 11" in _saved(skipped, tmp_path, "no features", 1)


def test_an_snli_ve_hypothesis_of_an_image_without_features_is_an_error_or_counted(tmp_path, pieces):
    f = tmp_path / "ve.jsonl"
    f.write_text("".join(json.dumps({"Flickr30K_ID": i, "sentence2": "x", "gold_label": "neutral"}) + "\n"
                         for i in ("1", "99", "2")))
    pairs, images = read_snli_ve(f), _images(tmp_path)
    with pytest.raises(FormatError, match=re.escape(f"{f}:2: its image has no region features")):
        VEDataset(pairs, images, pieces)
    skipped = SkippedSamples()
    assert len(VEDataset(pairs, images, pieces, skip=skipped)) == 2
    assert f"{f}:2" in _saved(skipped, tmp_path, "no features", 1)


def test_features_no_detector_gives_are_an_error_or_counted(tmp_path):
    root = write_corpus(tmp_path / "c", ids=["1", "2", "3"])
    x = np.ones((3, DIM), dtype=np.float32)
    x[2, 5] = 1e30
    rows = [(i, x if i == "2" else np.ones((3, DIM), dtype=np.float32)) for i in ("1", "2", "3")]
    with pytest.raises(FormatError, match="beyond"):
        write_vinvl_features(tmp_path / "w.tsv", rows)  # nor are they written
    import base64
    lines = (root / "features.tsv").read_text().splitlines()
    lines[1] = f"2\t3\t{base64.b64encode(x.astype('<f4').tobytes()).decode()}"
    (root / "features.tsv").write_text("\n".join(lines) + "\n")
    feats = VinVLFeatures(root / "features.tsv", DIM)
    with pytest.raises(FormatError, match=re.escape("line 2 (image 2): 1 feature values beyond +-10000")) as err:
        feats["2"]
    assert err.value.reason == "huge features" and feats["1"].shape == (3, DIM)
