import base64
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from mvptr.demo.scenes import COLORS, SHAPES, SIZES, render_scene
from mvptr.demo.world import generate_demo_world
from mvptr.vision.demo_detector import DemoDetector
from mvptr.vision.regions import Regions, box_iou, box_position_features

N_TRAIN, N_VAL, N_TEST = 60, 10, 20
FEAT_DIM = 32
ENTITY = re.compile(r"\[/EN#(\d+)/other ([^\]]+)\]")


def _generate(out, seed=0):
    return generate_demo_world(out, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, seed=seed,
                               detector_epochs=2, feat_dim=FEAT_DIM, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, _generate(out)


def _tsv_rows(path):
    data = path.read_bytes()
    offsets = [int(x) for x in (path.with_suffix(".lineidx")).read_text().split("\n")[:-1]]
    return data, offsets


def _features(out):
    data, offsets = _tsv_rows(out / "features.tsv")
    rows = {}
    for start in offsets:
        image_id, n, b64 = data[start:data.index(b"\n", start)].decode().split("\t")
        rows[image_id] = np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(int(n), -1)
    return rows


def _predictions(out):
    data, offsets = _tsv_rows(out / "predictions.tsv")
    rows = {}
    for start in offsets:
        image_id, text = data[start:data.index(b"\n", start)].decode().split("\t")
        rows[image_id] = json.loads(text)
    return rows


def _entities(out, image_id):
    root = out / "flickr30k_entities"
    lines = (root / "Sentences" / f"{image_id}.txt").read_text().splitlines()
    ann = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    boxes = {obj.findtext("name"): [int(obj.find("bndbox").findtext(t))
                                    for t in ("xmin", "ymin", "xmax", "ymax")]
             for obj in ann.iter("object")}
    return lines, ann, boxes


# --------------------------------------------------------------------------- files and formats

def test_files_written(world):
    out, summary = world
    for name in ("captions.json", "features.tsv", "features.lineidx", "predictions.tsv",
                 "predictions.lineidx", "detector.safetensors", "world.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "images").glob("*.png"))) == N_TRAIN + N_VAL + N_TEST
    n_images = N_TRAIN + N_VAL + N_TEST  # training images too, for fine-tuning grounding
    assert len(list((out / "flickr30k_entities" / "Sentences").glob("*.txt"))) == n_images
    assert len(list((out / "flickr30k_entities" / "Annotations").glob("*.xml"))) == n_images
    for name in ("vqa/v2_OpenEnded_demo_train_questions.json", "vqa/v2_demo_test_annotations.json",
                 "snli_ve/snli_ve_dev.jsonl"):
        assert (out / name).is_file(), name
    world_json = json.loads((out / "world.json").read_text())
    assert world_json["splits"] == {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    assert world_json["region_feature_dim"] == FEAT_DIM + 6
    assert set(world_json["detector"]["accuracy"]["heldout"]) == {"shape", "color", "size"}
    assert {"circle", "rectangle", "triangle"} <= set(world_json["shapes"])
    assert {"red", "green", "blue", "yellow", "teal", "brown", "gray", "black"} <= set(world_json["colors"])
    assert summary["num_captions"] == 5 * (N_TRAIN + N_VAL + N_TEST)


def test_karpathy_captions(world):
    out, _ = world
    data = json.loads((out / "captions.json").read_text())
    assert data["dataset"] == "demo"
    images = data["images"]
    assert [im["split"] for im in images] == ["train"] * N_TRAIN + ["val"] * N_VAL + ["test"] * N_TEST
    assert len({im["filename"] for im in images}) == len(images)
    sentids = []
    for im in images:
        assert im["filename"] == f"{im['imgid']:06d}.png"
        assert Image.open(out / "images" / im["filename"]).size == (96, 96)
        assert len(im["sentences"]) == 5 and len({s["raw"] for s in im["sentences"]}) == 5
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"]
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
            assert s["raw"][0].isupper() and s["raw"].endswith(".")
        sentids += im["sentids"]
    assert sentids == list(range(len(sentids)))


def test_lineidx_offsets_are_row_starts(world):
    out, _ = world
    ids = [f"{i:06d}" for i in range(N_TRAIN + N_VAL + N_TEST)]
    for name in ("features.tsv", "predictions.tsv"):
        data, offsets = _tsv_rows(out / name)
        assert len(offsets) == len(ids)
        assert offsets[0] == 0 and data.endswith(b"\n")
        assert all(data[o - 1:o] == b"\n" for o in offsets[1:])
        assert data.count(b"\n") == len(offsets)  # no row starts elsewhere
        assert [data[o:data.index(b"\t", o)].decode() for o in offsets] == ids


def test_features_and_predictions_agree(world):
    out, _ = world
    feats, preds = _features(out), _predictions(out)
    assert feats.keys() == preds.keys()
    total = 0
    for image_id, f in feats.items():
        p = preds[image_id]
        assert f.dtype == np.float32 and f.shape == (p["num_boxes"], FEAT_DIM + 6)
        assert np.isfinite(f).all()
        assert (p["image_w"], p["image_h"]) == (96, 96) and len(p["objects"]) == p["num_boxes"]
        for obj in p["objects"]:
            assert obj["class"] in SHAPES and 0 < obj["conf"] <= 1
            x1, y1, x2, y2 = obj["rect"]
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        # The last 6 numbers of a region's feature are its predicted box's position.
        rects = np.asarray([o["rect"] for o in p["objects"]], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_allclose(f[:, FEAT_DIM:], box_position_features(rects, 96, 96), atol=1e-4)
        total += len(f)
    assert total >= 2 * len(feats)


def test_flickr30k_entities(world):
    out, _ = world
    for i in range(N_TRAIN + N_VAL + N_TEST):
        image_id = f"{i:06d}"
        lines, ann, boxes = _entities(out, image_id)
        assert ann.tag == "annotation"
        assert [ann.find("size").findtext(t) for t in ("width", "height", "depth")] == ["96", "96", "3"]
        assert len(lines) == 5
        mentioned = {m.group(1) for line in lines for m in ENTITY.finditer(line)}
        assert mentioned and mentioned <= set(boxes)
        for line in lines:
            assert len(ENTITY.findall(line)) >= 2
            for _, phrase in ENTITY.findall(line):
                assert phrase.split()[-1] in SHAPES and phrase.split()[-2] in COLORS
        for x1, y1, x2, y2 in boxes.values():
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96


def test_relations_follow_geometry(world):
    out, _ = world
    direction = {"above": (1, -1), "over": (1, -1), "below": (1, 1), "under": (1, 1), "beneath": (1, 1),
                 "left of": (0, -1), "just right of": (0, 1)}
    checked = 0
    for i in range(N_TRAIN, N_TRAIN + N_VAL + N_TEST):
        lines, _, boxes = _entities(out, f"{i:06d}")
        for line in lines:
            m = re.match(r"(?:There is )?\[/EN#(\d+)/other [^\]]+\] (?:sits )?(.+?) \[/EN#(\d+)/other", line)
            if m and m.group(2) in direction:
                axis, sign = direction[m.group(2)]
                a, b = boxes[m.group(1)], boxes[m.group(3)]
                delta = (a[axis] + a[axis + 2]) - (b[axis] + b[axis + 2])
                assert np.sign(delta) == sign, line
                checked += 1
    assert checked >= 20


def test_proposals_find_every_object(world):
    out, _ = world
    preds = _predictions(out)
    found = total = 0
    for i in range(N_TRAIN, N_TRAIN + N_VAL + N_TEST):
        _, _, boxes = _entities(out, f"{i:06d}")
        rects = [o["rect"] for o in preds[f"{i:06d}"]["objects"]]
        iou = box_iou(np.asarray(list(boxes.values())), np.asarray(rects).reshape(-1, 4))
        found += int((iou.max(1) > 0.7).sum())
        total += len(boxes)
    assert found == total


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes(world, tmp_path):
    out, _ = world
    _generate(tmp_path / "again")
    for name in ("captions.json", "features.tsv", "predictions.tsv"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    png = "images/000042.png"
    assert (tmp_path / "again" / png).read_bytes() == (out / png).read_bytes()


def test_other_seed_other_world(world, tmp_path):
    out, _ = world
    _generate(tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "captions.json").read_bytes() != (out / "captions.json").read_bytes()


# --------------------------------------------------------------------------- features come from pixels

def test_saved_detector_reproduces_features_from_png(world):
    out, _ = world
    detector = DemoDetector.load(out / "detector.safetensors")
    ids = [f"{i:06d}" for i in range(N_TRAIN, N_TRAIN + N_VAL)]
    images = [np.asarray(Image.open(out / "images" / f"{i}.png")) for i in ids]
    regions = detector.detect(images)
    feats = _features(out)
    for image_id, reg in zip(ids, regions):
        assert isinstance(reg, Regions)
        np.testing.assert_allclose(reg.features, feats[image_id], rtol=1e-5, atol=1e-5)


def test_same_label_different_features(world):
    out, _ = world
    feats, preds = _features(out), _predictions(out)
    # Every region matched to a true object, grouped by that object's words ("small red circle").
    groups = {}
    for i in range(N_TRAIN, N_TRAIN + N_VAL + N_TEST):
        image_id = f"{i:06d}"
        lines, _, boxes = _entities(out, image_id)
        words = {}
        for line in lines:
            for eid, phrase in ENTITY.findall(line):
                if len(phrase.split()) == 4:  # "a small red circle": size word included
                    words[eid] = " ".join(phrase.lower().split()[1:]).replace("large", "big")
        rects = np.asarray([o["rect"] for o in preds[image_id]["objects"]]).reshape(-1, 4)
        for eid, label in words.items():
            iou = box_iou(np.asarray([boxes[eid]]), rects)[0]
            groups.setdefault(label, []).append(feats[image_id][int(iou.argmax()), :FEAT_DIM])
    shared = [g for g in groups.values() if len(g) >= 2]
    assert shared, "no two objects with the same label in the tiny world"
    for g in shared:
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                assert not np.allclose(g[a], g[b])


def test_features_change_with_pixels_not_labels(world):
    out, _ = world
    detector = DemoDetector.load(out / "detector.safetensors")
    image = np.asarray(Image.open(out / "images" / f"{N_TRAIN:06d}.png")).copy()
    before = detector.detect([image])[0]
    x1, y1, x2, y2 = before.boxes[0].astype(int)
    brighter = image.copy()
    patch = brighter[y1:y2, x1:x2].astype(int)
    background = np.median(image[0], axis=0)
    fg = np.abs(patch - background).max(-1) > 60
    patch[fg] = np.clip(patch[fg] + 12, 0, 255)  # the same shape, a little brighter
    brighter[y1:y2, x1:x2] = patch
    after = detector.detect([brighter])[0]
    np.testing.assert_array_equal(after.boxes, before.boxes)
    assert not np.allclose(after.features[0, :FEAT_DIM], before.features[0, :FEAT_DIM])


@pytest.mark.slow
def test_detector_learns_from_pixels():
    rng = np.random.default_rng(3)
    scenes = [render_scene(rng) for _ in range(300)]
    images = [img for img, _ in scenes]
    objects = [[{"box": o.box, "shape": o.shape, "color": o.color, "size": o.size} for o in objs]
               for _, objs in scenes]
    detector = DemoDetector(SHAPES, list(COLORS), SIZES)
    acc = detector.fit(images, objects, epochs=5, seed=0, holdout=0.25, progress=False)
    assert min(acc["heldout"].values()) > 0.9  # chance: 1/7 shapes, 1/9 colours, 1/2 sizes
    assert acc["heldout_crops"] > 100


# --------------------------------------------------------------------------- box geometry

def test_box_position_features():
    boxes = np.array([[10, 20, 40, 60], [0, 0, 200, 100]], dtype=np.float32)
    got = box_position_features(boxes, 200, 100)
    expected = np.array([[0.05, 0.2, 0.2, 0.6, 0.15, 0.4], [0, 0, 1, 1, 1, 1]], dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (2, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert box_position_features(np.zeros((0, 4)), 10, 10).shape == (0, 6)


def test_box_iou():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], dtype=np.float32)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [1, 1, 3, 3]], dtype=np.float32)
    got = box_iou(a, b)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got[0], [1.0, 2 / 6, 0.0, 1 / 7])
    np.testing.assert_allclose(got[1], [4 / 16, 4 / 16, 0.0, 4 / 16])
    assert box_iou(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]))[0, 0] == 0.0  # empty boxes
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)
