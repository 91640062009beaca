"""Files in the layouts others write them: VinVL/Oscar/scene_graph_benchmark TSVs, SNLI-VE and
IGLUE's XVNLI, ALBEF/LAVIS caption lists, Karpathy JSON variants. Each file below is written
byte for byte in its public layout, not through our writers."""

import base64
import json
import re

import numpy as np
import pytest

from mvptr.core.errors import FormatError, SkippedSamples
from mvptr.formats.captions import CaptionRecord, ImageIds, read_captions
from mvptr.formats.snli_ve import read_snli_ve
from mvptr.formats.tsv import build_lineidx
from mvptr.formats.vinvl import VinVLFeatures, VinVLPredictions
from mvptr.vision.store_convert import convert_vinvl_to_memmap
from mvptr.vision.stores import MemmapStore, TSVStore


def _tsv(path, text):
    path.write_text(text)
    build_lineidx(path)
    return path


def _b64(x):
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


FEATS = np.arange(2 * 6, dtype=np.float32).reshape(2, 6) / 10

# scene_graph_benchmark tools/mini_tsv/data: label rows are the objects alone, sizes in hw.tsv
LABEL_TSV = ('000000522418\t[{"rect": [1, 1, 30, 40], "class": "Dog"}, {"rect": [2, 3, 100, 100], "class": "Cat"}]\n'
             '000000184613\t[{"rect": [1, 1, 30, 40], "class": "Dog"}, {"rect": [2, 3, 100, 100], "class": "Cat"}]\n')
HW_TSV = ('000000522418\t[{"height": 480, "width": 640}]\n'
          '000000184613\t[{"height": 336, "width": 500}]\n')


def _captioning_dir(root):
    """VinVL captioning data: train.feature.tsv (id \\t {"num_boxes", "features"}), train.label.tsv,
    train.hw.tsv, each with its .lineidx."""
    feature_rows = "".join(f'{i}\t{json.dumps({"num_boxes": 2, "features": _b64(FEATS * (k + 1))})}\n'
                           for k, i in enumerate(["000000522418", "000000184613"]))
    return (_tsv(root / "train.feature.tsv", feature_rows), _tsv(root / "train.label.tsv", LABEL_TSV),
            _tsv(root / "train.hw.tsv", HW_TSV))


def test_vinvl_captioning_feature_label_and_hw_files(tmp_path):
    features, labels, _ = _captioning_dir(tmp_path)
    np.testing.assert_array_equal(VinVLFeatures(features, feat_dim=6)["000000184613"], FEATS * 2)
    store = TSVStore(features, labels, feat_dim=6)
    image = store["000000184613"]
    assert (image["width"], image["height"]) == (500, 336)
    assert image["classes"] == ["Dog", "Cat"] and image["confs"].tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(image["boxes"], [[1, 1, 30, 40], [2, 3, 100, 100]])
    # and on to a store, which keeps the sizes the hw.tsv gave
    convert_vinvl_to_memmap(features, labels, tmp_path / "store", progress=False)
    assert MemmapStore(tmp_path / "store")["000000522418"]["width"] == 640


def test_label_rows_without_a_hw_file_say_where_the_sizes_go(tmp_path):
    labels = _tsv(tmp_path / "train.label.tsv", LABEL_TSV)
    with pytest.raises(FormatError, match=r"train\.label\.tsv line 1 \(image 000000522418\): no \"image_w\" "
                                          r"and \"image_h\", and no hw\.tsv beside"):
        VinVLPredictions(labels)["000000522418"]
    _tsv(tmp_path / "hw.tsv", HW_TSV.splitlines(keepends=True)[0])  # a hw.tsv that lacks an image
    with pytest.raises(FormatError, match=r"its size is not in .*hw\.tsv"):
        VinVLPredictions(labels)["000000184613"]


def test_vinvl_detector_predictions_take_sizes_from_the_companion_hw_file(tmp_path):
    # maskrcnn_benchmark's convert_predictions_to_tsv: objects and relations, no image size
    row = {"objects": [{"rect": [10.5, 20.0, 300.25, 400.0], "bbox_id": 0, "class": "man", "conf": 0.93},
                       {"rect": [0.0, 0.0, 639.0, 479.0], "bbox_id": 1, "class": "room", "conf": 0.41}],
           "relations": None}
    preds = _tsv(tmp_path / "predictions.tsv", f"000000522418\t{json.dumps(row)}\n")
    _tsv(tmp_path / "predictions.hw.tsv", HW_TSV)
    pred = VinVLPredictions(preds)["000000522418"]
    assert (pred["image_w"], pred["image_h"]) == (640, 480) and pred["objects"][1]["class"] == "room"


def test_box_counts_written_as_strings(tmp_path):
    features = _tsv(tmp_path / "f.tsv", f'1\t{json.dumps({"num_boxes": "2", "features": _b64(FEATS)})}\n'
                                        f'2\t{json.dumps({"num_boxes": "two", "features": _b64(FEATS)})}\n')
    assert VinVLFeatures(features)["1"].shape == (2, 6)
    with pytest.raises(FormatError, match=r"line 2 \(image 2\): expected a non-negative integer box count, got 'two'"):
        VinVLFeatures(features)["2"]
    preds = _tsv(tmp_path / "p.tsv", '1\t{"image_h": 9, "image_w": 9, "num_boxes": "1", "objects": '
                                     '[{"rect": [1, 1, 2, 2], "class": "cat", "conf": 0.5}]}\n')
    assert VinVLPredictions(preds)["1"]["num_boxes"] == 1


def test_oscar_per_box_feature_rows(tmp_path):
    # Oscar's convert_feature_format: one {"feature": base64} per box
    rows = json.dumps([{"feature": _b64(FEATS[0])}, {"feature": _b64(FEATS[1])}])
    np.testing.assert_array_equal(VinVLFeatures(_tsv(tmp_path / "f.tsv", f"5\t{rows}\n"))["5"], FEATS)


@pytest.mark.parametrize("rect", [[30, 10, 20, 40], [1, 40, 30, 10], [1, float("nan"), 3, 4]])
def test_boxes_with_swapped_corners_or_nan_are_errors(tmp_path, rect):
    preds = _tsv(tmp_path / "p.tsv", f'1\t{{"image_h": 50, "image_w": 50, "objects": '
                                     f'[{{"rect": {json.dumps(rect)}, "class": "cat"}}]}}\n')
    with pytest.raises(FormatError, match=r"object 0: box .* is not finite corners") as err:
        VinVLPredictions(preds)["1"]
    assert err.value.reason == "bad box"


# --------------------------------------------------------------------------- SNLI-VE

def test_snli_ve_spellings_of_the_image_key_and_unlabelled_rows(tmp_path):
    # IGLUE XVNLI (datasets/XVNLI/annotations/en/train_1.jsonl)
    xvnli = tmp_path / "train_1.jsonl"
    xvnli.write_text(
        '{"gold_label": "neutral", "sentence1": "The flight attendant dressed in yellow demonstrates life vest '
        'usage.", "sentence2": "A flight attendant is standing in front of passengers.", "captionID": '
        '"2487069642.jpg#1", "pairID": "2487069642.jpg#1r1e", "Flikr30kID": "2487069642"}\n')
    (pair,) = read_snli_ve(xvnli)
    assert (pair.image_id, pair.label, pair.pair_id) == ("2487069642", "neutral", "2487069642.jpg#1r1e")
    # the original generator: Flikr30kID with the file suffix, keys sorted; and a row without a majority
    original = tmp_path / "snli_ve_train.jsonl"
    original.write_text(
        '{"Flikr30kID": "2248275918.jpg", "annotator_labels": ["neutral"], "captionID": "2248275918.jpg#0", '
        '"gold_label": "neutral", "pairID": "2248275918.jpg#0r1n", "sentence1": "A dog runs.", '
        '"sentence2": "The dog is fast."}\n'
        '{"Flikr30kID": "2248275918.jpg", "annotator_labels": ["neutral", "entailment", "contradiction"], '
        '"captionID": "2248275918.jpg#0", "gold_label": "-", "pairID": "2248275918.jpg#0r1c", '
        '"sentence1": "A dog runs.", "sentence2": "The dog sleeps."}\n')
    skipped = SkippedSamples()
    pairs = read_snli_ve(original, skipped)
    assert [p.image_id for p in pairs] == ["2248275918"] and pairs.unlabelled == 1
    assert skipped.summary()["by_reason"]["no gold label"]["samples"] == 1
    assert read_snli_ve(original).unlabelled == 1  # left out and counted without --skip-bad too
    original.write_text('{"Flikr30kID": "1.jpg", "gold_label": "maybe", "sentence2": "x"}\n')
    with pytest.raises(FormatError, match=r"snli_ve_train\.jsonl:1: gold_label 'maybe'"):
        read_snli_ve(original)


# --------------------------------------------------------------------------- ALBEF / LAVIS caption lists

COCO_TRAIN = ('[{"caption": "A woman wearing a net on her head cutting a cake. ", '
              '"image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"}, '
              '{"caption": "A woman cutting a large white sheet cake.", '
              '"image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"}]')
COCO_TEST = ('[{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["A man with a red helmet on a '
             'small moped on a dirt road. ", "Man riding a motor bike on a dirt road on the countryside."]}]')


def _lavis(tmp_path):
    (tmp_path / "coco_karpathy_train.json").write_text(COCO_TRAIN)
    (tmp_path / "coco_karpathy_test.json").write_text(COCO_TEST)
    return str(tmp_path / "coco_karpathy_{split}.json")


def test_lavis_lists_take_their_split_from_the_file_name_and_map_ids(tmp_path):
    template = _lavis(tmp_path)
    ids = ImageIds(r"0*(\d+)$")
    assert read_captions(template, ["train"], image_ids=ids) == [
        CaptionRecord("522418", "A woman wearing a net on her head cutting a cake.", "train", 0),
        CaptionRecord("522418", "A woman cutting a large white sheet cake.", "train", 1)]
    test = read_captions(template, ["test"], image_ids=ids)
    assert [(r.image_id, r.split, r.sent_id) for r in test] == [("391895", "test", 0), ("391895", "test", 1)]
    # without splits: every file the template matches, each its own split
    assert sorted({r.split for r in read_captions(template, image_ids=ids)}) == ["test", "train"]
    with pytest.raises(FormatError, match=r"coco_karpathy_val\.json: file not found"):
        read_captions(template, ["val"])


def test_a_list_without_split_read_directly_is_an_error(tmp_path):
    _lavis(tmp_path)
    with pytest.raises(FormatError, match=r"coco_karpathy_test\.json \(entry 0\): caption lists .* carry no split"):
        read_captions(tmp_path / "coco_karpathy_test.json", ["test"])


def test_image_id_mapping_file_and_pattern_errors(tmp_path):
    template = _lavis(tmp_path)
    (tmp_path / "ids.json").write_text('{"COCO_val2014_000000391895": 391895}')
    ids = ImageIds(mapping=tmp_path / "ids.json")
    assert {r.image_id for r in read_captions(template, ["test"], image_ids=ids)} == {"391895"}
    with pytest.raises(FormatError, match=r"coco_karpathy_train\.json \(entry 0\): image id "
                                          r"'COCO_val2014_000000522418' is not in the image id map"):
        read_captions(template, ["train"], image_ids=ids)
    with pytest.raises(FormatError, match=re.escape(r"does not match the image id pattern ^coco_(\d+)$")):
        read_captions(template, ["test"], image_ids=ImageIds(r"^coco_(\d+)$"))
    with pytest.raises(FormatError, match="not a regular expression"):
        ImageIds("(")


def test_albef_flickr_lists_are_keyed_by_file_name_not_their_image_index(tmp_path):
    # ALBEF's flickr30k_train.json numbers the images 0, 1, ... in "image_id"
    (tmp_path / "flickr30k_train.json").write_text(
        '[{"image": "flickr30k-images/1000092795.jpg", "caption": "Two young guys with shaggy hair look at their '
        'hands while hanging out in the yard.", "image_id": 0}]')
    (record,) = read_captions(tmp_path / "flickr30k_{split}.json", ["train"])
    assert record.image_id == "1000092795"


# --------------------------------------------------------------------------- Karpathy JSON variants

def _karpathy(tmp_path, images):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def _image(cocoid, split, sentences):
    return {"filepath": "val2014", "sentids": [s.get("sentid") for s in sentences], "filename":
            f"COCO_val2014_{cocoid:012d}.jpg", "imgid": 0, "split": split, "sentences": sentences, "cocoid": cocoid}


def test_karpathy_restval_trains_with_train(tmp_path):
    path = _karpathy(tmp_path, [
        _image(1, "train", [{"tokens": ["a", "dog"], "raw": "A dog.", "imgid": 0, "sentid": 0}]),
        _image(2, "restval", [{"tokens": ["a", "cat"], "raw": "A cat.", "imgid": 1, "sentid": 1}]),
        _image(3, "val", [{"tokens": ["a", "cow"], "raw": "A cow.", "imgid": 2, "sentid": 2}])])
    assert [r.image_id for r in read_captions(path, ["train+restval"])] == ["1", "2"]
    assert [r.image_id for r in read_captions(path, ["train"])] == ["1"]


def test_karpathy_sentences_with_only_tokens_and_string_sentids(tmp_path):
    path = _karpathy(tmp_path, [_image(7, "train", [{"tokens": ["a", "man", "surfing"], "imgid": 0, "sentid": "12"}])])
    assert read_captions(path) == [CaptionRecord("7", "a man surfing", "train", 12)]


@pytest.mark.parametrize("sentid", ["12a", -1, 1.5, None])
def test_karpathy_bad_sentid_is_a_clean_error(tmp_path, sentid):
    path = _karpathy(tmp_path, [_image(7, "train", [{"raw": "A dog.", "imgid": 0, "sentid": sentid}])])
    with pytest.raises(FormatError, match=r"dataset_coco\.json \(image 7, sentence 0\): expected a non-negative "
                                          r"integer \"sentid\"") as err:
        read_captions(path)
    assert err.value.reason == "bad sentence id"


def test_karpathy_duplicate_image_is_refused(tmp_path):
    path = _karpathy(tmp_path, [_image(7, "train", [{"raw": "A dog.", "sentid": 0}]),
                                _image(7, "train", [{"raw": "A cat.", "sentid": 1}])])
    with pytest.raises(FormatError, match=r"\(images\[1\]\): image 7 already appears as images\[0\]"):
        read_captions(path)
    skipped = SkippedSamples()
    assert [r.caption for r in read_captions(path, skip=skipped)] == ["A dog."]
    assert skipped.summary()["by_reason"]["duplicate image"]["samples"] == 1
