import base64
import json
import pickle

import numpy as np
import pytest

from mvptr.core.errors import FormatError, SkippedSamples
from mvptr.formats.captions import CaptionRecord, read_captions, write_karpathy_json
from mvptr.formats.entities import read_flickr30k_annotation, read_flickr30k_sentences, write_flickr30k_entities
from mvptr.formats.phrase_cache import ParsedCaption, phrase_key, read_phrase_cache, write_phrase_cache
from mvptr.formats.tsv import TSVFile, build_lineidx
from mvptr.formats.vinvl import VinVLFeatures, VinVLPredictions, write_vinvl_features, write_vinvl_predictions

# --------------------------------------------------------------------------- captions

def test_karpathy_round_trip(tmp_path):
    path = tmp_path / "dataset_coco.json"
    write_karpathy_json(path, [
        {"filename": "COCO_val2014_000000000042.jpg", "imgid": 0, "split": "test",
         "cocoid": 42, "sentences": ["A man's red Hat.", "Two dogs"]},
        {"filename": "1000092795.jpg", "imgid": 1, "split": "restval",
         "sentences": ["a dog runs"]},
    ], dataset="coco")
    data = json.loads(path.read_text())
    assert data["dataset"] == "coco"
    first = data["images"][0]
    assert first["sentids"] == [0, 1] and first["cocoid"] == 42
    assert first["sentences"][0] == {"raw": "A man's red Hat.", "imgid": 0, "sentid": 0,
                                     "tokens": ["a", "mans", "red", "hat"]}
    assert data["images"][1]["sentids"] == [2]

    assert read_captions(path) == [
        CaptionRecord("42", "A man's red Hat.", "test", 0),
        CaptionRecord("42", "Two dogs", "test", 1),
        CaptionRecord("1000092795", "a dog runs", "restval", 2),
    ]
    assert [r.split for r in read_captions(path, splits=["restval"])] == ["restval"]


def test_albef_list_string_and_list_captions(tmp_path):
    path = tmp_path / "coco_train.json"
    # Written by hand in the on-disk layout; the split comes from the file name, or an entry's own
    path.write_text(
        '[{"image": "train2014/COCO_train2014_000000000009.jpg", "caption": "a plate of food"},'
        ' {"image": "train2014/COCO_train2014_000000000009.jpg", "caption": "some food"},'
        ' {"image_id": 77, "caption": ["one", "two"]}]')
    assert read_captions(tmp_path / "coco_{split}.json") == [
        CaptionRecord("COCO_train2014_000000000009", "a plate of food", "train", 0),
        CaptionRecord("COCO_train2014_000000000009", "some food", "train", 1),
        CaptionRecord("77", "one", "train", 0),
        CaptionRecord("77", "two", "train", 1),
    ]
    assert len(read_captions(tmp_path / "coco_{split}.json", splits=("train",))) == 4
    path.write_text('[{"image": "val2014/x.jpg", "caption": ["one", "two"], "image_id": 77, "split": "val"}]')
    assert read_captions(path) == [CaptionRecord("x", "one", "val", 0), CaptionRecord("x", "two", "val", 1)]
    assert read_captions(path, splits=("train",)) == []


@pytest.mark.parametrize("caption", ["", "   ", 5])
def test_bad_caption(tmp_path, caption):
    path = tmp_path / "caps.json"
    path.write_text(json.dumps([{"image": "a/img7.jpg", "caption": ["ok", caption], "split": "train"}]))
    with pytest.raises(FormatError, match=r"caps\.json.*image img7.*non-empty caption"):
        read_captions(path)


def test_bad_karpathy_caption(tmp_path):
    path = tmp_path / "karpathy.json"
    write_karpathy_json(path, [{"filename": "5.jpg", "imgid": 0, "split": "train",
                                "sentences": [""]}])
    with pytest.raises(FormatError, match=r"karpathy\.json.*image 5, sentence 0"):
        read_captions(path)


def test_captions_missing_or_not_json(tmp_path):
    with pytest.raises(FormatError, match=r"nope\.json: file not found"):
        read_captions(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(FormatError, match=r"bad\.json: expected a JSON"):
        read_captions(tmp_path / "bad.json")


# --------------------------------------------------------------------------- VinVL TSV

def _features(seed, n, d=4):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_vinvl_features_round_trip(tmp_path):
    path = tmp_path / "features.tsv"
    rows = [("391895", _features(0, 3)), ("522418", _features(1, 1)), ("empty", _features(2, 0))]
    write_vinvl_features(path, rows)

    lines = path.read_bytes().split(b"\n")[:-1]
    offsets = [int(x) for x in (tmp_path / "features.lineidx").read_text().splitlines()]
    assert offsets == [0, len(lines[0]) + 1, len(lines[0]) + len(lines[1]) + 2]

    feats = VinVLFeatures(path, feat_dim=4)
    assert len(feats) == 3 and feats.ids() == ["391895", "522418", "empty"]
    assert "522418" in feats and "nope" not in feats
    for image_id, expected in rows:
        got = feats[image_id]
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got, expected)
    clone = pickle.loads(pickle.dumps(feats))
    assert np.array_equal(clone["391895"], rows[0][1])
    assert np.array_equal(VinVLFeatures(path, imageid2idx={"522418": 1})["522418"], rows[1][1])


def test_vinvl_features_hand_written(tmp_path):
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "feats.tsv"
    path.write_text("img1\t2\t" + base64.b64encode(data.tobytes()).decode() + "\n")
    (tmp_path / "feats.lineidx").write_text("0\n")
    assert np.array_equal(VinVLFeatures(path)["img1"], data)


def test_imageid2idx_beside_tsv(tmp_path):
    path = tmp_path / "features.tsv"
    write_vinvl_features(path, [("a", _features(0, 2)), ("b", _features(1, 2))])
    (tmp_path / "imageid2idx.json").write_text('{"b": 1, "a": 0}')
    feats = VinVLFeatures(path)
    assert sorted(feats.ids()) == ["a", "b"]
    assert np.array_equal(feats["b"], _features(1, 2))
    (tmp_path / "imageid2idx.json").write_text('{"b": "x"}')
    with pytest.raises(FormatError, match=r"imageid2idx\.json: expected an object mapping"):
        VinVLFeatures(path)
    (tmp_path / "imageid2idx.json").write_text('{"b": 0}')
    with pytest.raises(FormatError, match=r"features\.tsv line 1 \(image b\): row holds image a"):
        VinVLFeatures(path)["b"]


def test_tsvfile_lineidx_missing_and_build(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text("a\tx\nbb\ty\tz\n")
    with pytest.raises(FormatError, match=r"rows\.lineidx not found.*build_lineidx"):
        TSVFile(path)
    build_lineidx(path)
    tsv = TSVFile(path)
    assert len(tsv) == 2 and tsv.row(1) == ["bb", "y", "z"] and tsv.key(0) == "a"
    clone = pickle.loads(pickle.dumps(tsv))
    assert clone.row(0) == ["a", "x"]
    with pytest.raises(IndexError):
        tsv.row(2)


def test_tsvfile_reopens_in_new_process(tmp_path, monkeypatch):
    path = tmp_path / "rows.tsv"
    path.write_text("a\tx\n")
    build_lineidx(path)
    tsv = TSVFile(path)
    tsv.row(0)
    first = tsv._fd
    monkeypatch.setattr("os.getpid", lambda: -1)
    assert tsv.row(0) == ["a", "x"] and tsv._fd != first


def _bad_features(tmp_path, third_field, n="2"):
    path = tmp_path / "features.tsv"
    good = base64.b64encode(_features(0, 1).tobytes()).decode()
    path.write_text(f"ok\t1\t{good}\nimg9\t{n}\t{third_field}\n")
    build_lineidx(path)
    return path


def test_features_truncated_row(tmp_path):
    path = tmp_path / "features.tsv"
    path.write_text("ok\t1\nimg9\t2\tAAAA\n")
    build_lineidx(path)
    with pytest.raises(FormatError, match=r"features\.tsv line 1 \(image ok\): expected 3 "
                                          r"tab-separated fields, got 2"):
        VinVLFeatures(path)["ok"]


def test_features_bad_base64(tmp_path):
    path = _bad_features(tmp_path, "not base64!")
    with pytest.raises(FormatError, match=r"features\.tsv line 2 \(image img9\): expected base64"):
        VinVLFeatures(path)["img9"]


def test_features_wrong_width(tmp_path):
    b64 = base64.b64encode(_features(0, 2, d=5).tobytes()).decode()
    path = _bad_features(tmp_path, b64)
    feats = VinVLFeatures(path, feat_dim=4)
    with pytest.raises(FormatError,
                       match=r"line 2 \(image img9\): expected feature width 4, got 5"):
        feats["img9"]
    assert VinVLFeatures(path)["img9"].shape == (2, 5)  # without feat_dim the width is free


def test_features_num_boxes_mismatch(tmp_path):
    b64 = base64.b64encode(_features(0, 3).tobytes()).decode()
    with pytest.raises(FormatError, match=r"line 2 \(image img9\): num_boxes is 2 but the data "
                                          r"holds 3 boxes"):
        VinVLFeatures(_bad_features(tmp_path, b64), feat_dim=4)["img9"]


def test_features_byte_length(tmp_path):
    b64 = base64.b64encode(b"\0" * 10).decode()
    with pytest.raises(FormatError, match=r"line 2 \(image img9\): byte length 10 is not a "
                                          r"multiple of 4\*4"):
        VinVLFeatures(_bad_features(tmp_path, b64), feat_dim=4)["img9"]


def test_features_unknown_image_and_missing_file(tmp_path):
    path = _bad_features(tmp_path, "AAAA")
    with pytest.raises(FormatError, match=r"features\.tsv: image 404 not found"):
        VinVLFeatures(path)["404"]
    with pytest.raises(FormatError, match=r"gone\.tsv: file not found"):
        VinVLFeatures(tmp_path / "gone.tsv")


def test_features_duplicate_image(tmp_path):
    path = tmp_path / "features.tsv"
    write_vinvl_features(path, [("a", _features(0, 1)), ("a", _features(1, 1))])
    with pytest.raises(FormatError, match=r"line 2: image a already appears on line 1"):
        VinVLFeatures(path)


PRED = {"image_h": 480, "image_w": 640, "num_boxes": 2, "objects": [
    {"rect": [0.0, 10.5, 640.5, 480.0], "class": "man", "conf": 0.9},
    {"rect": [5, 5, 50, 60], "class": "hat", "conf": 0.5}]}


def test_predictions_round_trip(tmp_path):
    path = tmp_path / "predictions.tsv"
    write_vinvl_predictions(path, [("1", PRED), ("2", {**PRED, "objects": [], "num_boxes": 0})])
    preds = VinVLPredictions(path)
    assert preds["1"] == PRED and preds["2"]["objects"] == [] and len(preds) == 2


def test_predictions_hand_written(tmp_path):
    path = tmp_path / "pred.tsv"
    path.write_text('7\t{"image_h": 10, "image_w": 10, "objects": '
                    '[{"rect": [1, 1, 5, 5], "class": "cat", "conf": 0.7}]}\n')
    build_lineidx(path)
    assert VinVLPredictions(path)["7"]["objects"][0]["class"] == "cat"


@pytest.mark.parametrize("objects, message", [
    ([{"rect": [0, 0, 700, 10], "class": "man"}], r"object 0: box \[0, 0, 700, 10\] lies outside"),
    ([{"rect": [0, 0, 10], "class": "man"}], r"object 0: expected \"rect\" of 4 numbers"),
    ([{"rect": [0, 0, 1, 1], "class": 3}], r"object 0: expected a string \"class\""),
])
def test_predictions_bad_objects(tmp_path, objects, message):
    path = tmp_path / "predictions.tsv"
    write_vinvl_predictions(path, [("ok", PRED), ("img3", {**PRED, "objects": objects,
                                                           "num_boxes": len(objects)})])
    with pytest.raises(FormatError, match=r"predictions\.tsv line 2 \(image img3\): " + message):
        VinVLPredictions(path)["img3"]


def test_predictions_bad_json(tmp_path):
    path = tmp_path / "predictions.tsv"
    path.write_text("img3\t{not json\n")
    build_lineidx(path)
    with pytest.raises(FormatError, match=r"line 1 \(image img3\): expected a JSON object"):
        VinVLPredictions(path)["img3"]


# --------------------------------------------------------------------------- Flickr30k Entities

SENTENCES = (
    "[/EN#18/people A man] in [/EN#19/clothing an orange hat] starring at something .\n"
    "[/EN#18/people A man] wears [/EN#19/clothing/other a hat] near [/EN#0/notvisual it] .\n"
)

ANNOTATION = """<annotation>
  <filename>36979.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>200</xmax><ymax>370</ymax></bndbox></object>
  <object><name>19</name><name>21</name><bndbox><xmin>30</xmin><ymin>25</ymin><xmax>90</xmax><ymax>60</ymax></bndbox></object>
  <object><name>19</name><bndbox><xmin>31</xmin><ymin>26</ymin><xmax>91</xmax><ymax>61</ymax></bndbox></object>
  <object><name>20</name><nobndbox>1</nobndbox><scene>0</scene></object>
  <object><name>22</name><scene>1</scene><nobndbox>1</nobndbox></object>
</annotation>
"""


def test_flickr30k_sentences_hand_written(tmp_path):
    path = tmp_path / "36979.txt"
    path.write_text(SENTENCES)
    first, second = read_flickr30k_sentences(path)
    assert first.text == "A man in an orange hat starring at something ."
    assert [(p.text, p.entity_id, p.first_word, p.types) for p in first.phrases] == [
        ("A man", "18", 0, ["people"]), ("an orange hat", "19", 3, ["clothing"])]
    assert second.phrases[1].types == ["clothing", "other"]
    words = second.text.split()
    for p in second.phrases:
        assert " ".join(words[p.first_word:p.first_word + len(p.text.split())]) == p.text


def test_flickr30k_annotation_hand_written(tmp_path):
    path = tmp_path / "36979.xml"
    path.write_text(ANNOTATION)
    ann = read_flickr30k_annotation(path)
    assert (ann["width"], ann["height"], ann["depth"]) == (500, 375, 3)
    assert ann["boxes"] == {"18": [[10, 20, 200, 370]],
                            "19": [[30, 25, 90, 60], [31, 26, 91, 61]],
                            "21": [[30, 25, 90, 60]]}
    assert ann["nobox"] == {"20", "22"} and ann["scene"] == {"22"}


def test_flickr30k_write_round_trip(tmp_path):
    words = "A man in an orange hat starring at something .".split()
    write_flickr30k_entities(tmp_path, "36979", [
        (words, [(0, 2, "18", "people"), (3, 6, "19")]),
        ("The sky".split(), [(0, 2, "23", ["scene", "other"])]),
    ], boxes={"18": [[10, 20, 200, 370]], "19": [[30, 25, 90, 60]]}, width=500, height=375)
    text = (tmp_path / "Sentences" / "36979.txt").read_text()
    assert text.splitlines()[0] == ("[/EN#18/people A man] in [/EN#19/other an orange hat] "
                                    "starring at something .")
    first, second = read_flickr30k_sentences(tmp_path / "Sentences" / "36979.txt")
    assert first.text == " ".join(words) and second.phrases[0].types == ["scene", "other"]
    ann = read_flickr30k_annotation(tmp_path / "Annotations" / "36979.xml")
    assert ann["boxes"] == {"18": [[10, 20, 200, 370]], "19": [[30, 25, 90, 60]]}
    assert ann["nobox"] == {"23"} and (ann["width"], ann["height"]) == (500, 375)


def test_flickr30k_bad_input(tmp_path):
    (tmp_path / "s.txt").write_text("fine .\n[/EN#18/people A man in a hat .\n")
    with pytest.raises(FormatError, match=r"s\.txt line 2: .*unmatched bracket"):
        read_flickr30k_sentences(tmp_path / "s.txt")
    (tmp_path / "a.xml").write_text("<annotation><size><width>5</width></size")
    with pytest.raises(FormatError, match=r"a\.xml: malformed XML"):
        read_flickr30k_annotation(tmp_path / "a.xml")
    (tmp_path / "b.xml").write_text("<annotation><size><width>5</width></size></annotation>")
    with pytest.raises(FormatError, match=r"b\.xml \(size\): expected an integer <height>"):
        read_flickr30k_annotation(tmp_path / "b.xml")
    with pytest.raises(FormatError, match=r"none\.xml: file not found"):
        read_flickr30k_annotation(tmp_path / "none.xml")
    with pytest.raises(FormatError, match=r"none\.txt: file not found"):
        read_flickr30k_sentences(tmp_path / "none.txt")


# --------------------------------------------------------------------------- phrase cache

def test_phrase_cache_round_trip_and_append(tmp_path):
    path = tmp_path / "phrase_cache.jsonl"
    wave = ParsedCaption([("wave", "big"), ("man", "riding", "wave")],
                         [((15, 18), (19, 23)), ((2, 5), (6, 12), (19, 23))])
    cat = ParsedCaption([("cat", "on top of", "table")], [((2, 5), (6, 8), (9, 12), (13, 15), (18, 23))])
    write_phrase_cache(path, [("a man riding a big wave", wave)])
    write_phrase_cache(path, {"a wave": ParsedCaption([], []), "a cat on top of a table": cat}.items())
    assert path.read_text().splitlines()[0] == \
        '{"caption": "a man riding a big wave", "phrases": [["wave", "big"], ["man", "riding", "wave"]], ' \
        '"spans": [[[15, 18], [19, 23]], [[2, 5], [6, 12], [19, 23]]]}'
    assert read_phrase_cache(path) == {"a man riding a big wave": wave, "a wave": ParsedCaption([], []),
                                       "a cat on top of a table": cat}
    assert read_phrase_cache(path)["a man riding a big wave"].spans[0] == ((15, 18), (19, 23))


def test_phrase_cache_without_spans_says_to_delete_and_rebuild(tmp_path):
    path = tmp_path / "phrase_cache.jsonl"
    path.write_text('{"caption": "a big wave", "phrases": [["wave", "big"]]}\n')
    for skip in (None, SkippedSamples()):  # never skipped: every record of the file is of that version
        with pytest.raises(FormatError) as err:
            read_phrase_cache(path, skip)
        assert "\n" not in str(err.value)
        assert str(err.value).startswith(f"{path} line 1: a record without \"spans\"")
        assert "delete the file and run `mvptr prepare phrases` again" in str(err.value)


@pytest.mark.parametrize("spans", [[[[2, 5]], [[6, 9]]], [[[2, 40]]], [[[5, 2]]], [[[2.0, 5]]], [[[2, 5, 7]]],
                                   [[]], [["2-5"]], "x"])
def test_phrase_cache_bad_spans(tmp_path, spans):
    path = tmp_path / "phrase_cache.jsonl"
    good = '{"caption": "a big wave", "phrases": [["wave", "big"]], "spans": [[[2, 5], [6, 10]]]}\n'
    path.write_text(good + json.dumps({"caption": "a big wave", "phrases": [["wave", "big"]], "spans": spans}) + "\n")
    with pytest.raises(FormatError, match=r"phrase_cache\.jsonl line 2: expected \"spans\""):
        read_phrase_cache(path)
    skipped = SkippedSamples()
    assert read_phrase_cache(path, skipped)["a big wave"].spans == [((2, 5), (6, 10))]
    assert skipped.summary()["by_reason"]["bad phrase record"]["samples"] == 1


def test_phrase_cache_is_keyed_by_the_caption_text():
    # two images' captions under one id, or an edited caption, never share a record
    assert phrase_key(CaptionRecord("1", "a dog", "train", 0)) != phrase_key(CaptionRecord("1", "a cat", "train", 0))
    assert phrase_key(CaptionRecord("1", "a dog", "train", 0)) == phrase_key(CaptionRecord("9", "a dog", "test", 3))


def test_phrase_cache_of_an_earlier_layout_says_to_rebuild(tmp_path):
    path = tmp_path / "phrase_cache.jsonl"
    path.write_text('{"id": "1:0", "phrases": [["wave", "big"]]}\n')
    with pytest.raises(FormatError, match=r"line 1: a record keyed by image and sentence id.*prepare phrases"):
        read_phrase_cache(path, SkippedSamples())


def test_phrase_cache_torn_tail(tmp_path):
    path = tmp_path / "phrase_cache.jsonl"
    wave, dog = ParsedCaption([("wave", "big")], [((2, 5), (6, 10))]), ParsedCaption([("dog", "small")], [((2, 11),)])
    write_phrase_cache(path, [("a big wave", wave)])
    with open(path, "a") as f:
        f.write('{"caption": "a small dog", "phr')  # interrupted write
    assert list(read_phrase_cache(path)) == ["a big wave"]
    write_phrase_cache(path, [("a small dog", dog)])
    assert read_phrase_cache(path) == {"a big wave": wave, "a small dog": dog}


def test_phrase_cache_bad_line(tmp_path):
    path = tmp_path / "phrase_cache.jsonl"
    path.write_text('{"caption": "a", "phrases": [], "spans": []}\n{broken\n'
                    '{"caption": "b", "phrases": [], "spans": []}\n')
    with pytest.raises(FormatError, match=r"phrase_cache\.jsonl line 2: expected a JSON object"):
        read_phrase_cache(path)
    path.write_text('{"caption": "a", "phrases": [["a", 3]], "spans": [[[0, 1]]]}\n')
    with pytest.raises(FormatError, match=r"phrase_cache\.jsonl line 1: expected"):
        read_phrase_cache(path)
