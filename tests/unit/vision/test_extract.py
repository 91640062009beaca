"""mvptr features extract: image files -> detector -> VinVL features/predictions TSV that read back."""

import importlib.util
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mvptr.cli import main
from mvptr.core.errors import FormatError
from mvptr.formats.vinvl import VinVLFeatures, VinVLPredictions
from mvptr.vision.demo_detector import DemoDetector
from mvptr.vision.detect import FasterRCNNDetector, extract_features
from mvptr.vision.store_convert import convert_vinvl_to_memmap
from mvptr.vision.stores import TSVStore

FEAT = 16
# image id -> (width, height, [box drawn as x1, y1, x2, y2 with x2, y2 exclusive])
SCENES = {
    "a": (64, 48, [[10, 8, 30, 24]]),
    "b": (80, 60, [[5, 5, 20, 15], [40, 30, 70, 55]]),
    "c": (64, 48, [[30, 20, 50, 40]]),
    "empty": (64, 48, []),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    (root / "images").mkdir()
    for image_id, (w, h, boxes) in SCENES.items():
        pixels = np.full((h, w, 3), 200, dtype=np.uint8)
        for x1, y1, x2, y2 in boxes:
            pixels[y1:y2, x1:x2] = (220, 30, 30)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.png")
    (root / "images" / "notes.txt").write_text("not an image")  # not an image suffix: ignored
    torch.manual_seed(0)
    DemoDetector(["circle", "square"], ["red", "blue"], ["small", "big"], feat_dim=FEAT).save(root / "det.safetensors")
    return root


def test_extract_writes_vinvl_files_that_read_back(images, tmp_path):
    summary = extract_features(images / "images", tmp_path / "out", weights=images / "det.safetensors",
                               batch_size=2, progress=False)
    assert summary["num_images"] == 4 and summary["num_regions"] == 4 and summary["feat_dim"] == FEAT + 6
    for name in ("features.tsv", "features.lineidx", "predictions.tsv", "predictions.lineidx", "imageid2idx.json"):
        assert (tmp_path / "out" / name).is_file()
    feats = VinVLFeatures(tmp_path / "out" / "features.tsv", feat_dim=FEAT + 6)
    preds = VinVLPredictions(tmp_path / "out" / "predictions.tsv")
    assert sorted(feats.ids()) == sorted(SCENES) and sorted(preds.ids()) == sorted(SCENES)
    store = TSVStore(tmp_path / "out" / "features.tsv", tmp_path / "out" / "predictions.tsv", FEAT + 6)
    for image_id, (w, h, boxes) in SCENES.items():
        image = store[image_id]
        assert (image["width"], image["height"]) == (w, h)
        assert image["region_feats"].shape == (len(boxes), FEAT + 6)
        np.testing.assert_allclose(image["boxes"], np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        b = image["boxes"]
        position = np.concatenate([b / [w, h, w, h], (b[:, 2:] - b[:, :2]) / [w, h]], 1) if len(b) else b[:, :0]
        np.testing.assert_allclose(image["region_feats"][:, FEAT:], position.reshape(len(b), 6), atol=1e-6)
        assert all(0 <= v <= 1 for v in image["region_feats"][:, FEAT:].ravel())
        assert set(image["classes"]) <= {"circle", "square"} and ((0 < image["confs"]) & (image["confs"] <= 1)).all()
    # the detector's own output for one image, written without loss
    pixels = np.asarray(Image.open(images / "images" / "b.png"))
    regions = DemoDetector.load(images / "det.safetensors").detect([pixels])
    np.testing.assert_array_equal(feats["b"], regions[0].features)
    assert json.loads((tmp_path / "out" / "imageid2idx.json").read_text()) == {i: k for k, i in enumerate(feats.ids())}
    convert_vinvl_to_memmap(tmp_path / "out" / "features.tsv", tmp_path / "out" / "predictions.tsv",
                            tmp_path / "store", progress=False)  # and on to the fast store


def test_extract_command_line_and_bad_image(images, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes((images / "images" / name).read_bytes())
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    args = ["features", "extract", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
            "--weights", str(images / "det.safetensors")]
    assert main(args) == 2
    assert re.search(re.escape(str(tmp_path / "images" / "broken.png")) + ": expected an image",
                     capsys.readouterr().err)
    assert main([*args, "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["num_images"] == 2 and summary["detector"] == "demo"
    assert "unreadable image" in err
    assert json.loads((tmp_path / "out" / "skipped.json").read_text())["by_reason"]["unreadable image"]["samples"] == 1
    assert VinVLFeatures(tmp_path / "out" / "features.tsv").ids() == ["a", "b"]


def test_extract_errors(images, tmp_path):
    with pytest.raises(FormatError, match="image directory not found"):
        extract_features(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "none").mkdir()
    with pytest.raises(FormatError, match="no image files"):
        extract_features(tmp_path / "none", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        extract_features(images / "images", tmp_path / "out", weights=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown detector"):
        extract_features(images / "images", tmp_path / "out", detector="yolo")
    with pytest.raises(ValueError, match="needs --weights"):
        extract_features(images / "images", tmp_path / "out", detector="frcnn")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_frcnn_without_torchvision_says_what_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"mvptr\[detect\]"):
        FasterRCNNDetector(tmp_path / "weights.pt")


def test_frcnn_regions_from_local_weights(images, tmp_path):
    pytest.importorskip("torchvision.models.detection")
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "frcnn.pt")
    detector = FasterRCNNDetector(tmp_path / "frcnn.pt", classes=["bg", "red", "blue"], score_threshold=0.0)
    pixels = [np.asarray(Image.open(images / "images" / f"{i}.png")) for i in ("a", "b")]
    for regions, image in zip(detector.detect(pixels, batch_size=2), pixels):
        assert regions.features.shape == (len(regions), 1024 + 6)
        assert (regions.image_h, regions.image_w) == image.shape[:2]
        if len(regions):
            b = regions.boxes
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= image.shape[1] + 1e-3).all()
            np.testing.assert_allclose(regions.features[:, 1024:1026], b[:, :2] / [image.shape[1], image.shape[0]],
                                       atol=1e-5)
    with pytest.raises(ValueError, match="fasterrcnn_resnet50_fpn state dict"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        FasterRCNNDetector(tmp_path / "other.pt")
