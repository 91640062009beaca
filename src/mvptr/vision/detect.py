"""Detectors and feature extraction: image files in, VinVL ``features.tsv`` and
``predictions.tsv`` out (``mvptr features extract``).

``--detector demo`` runs the demo world's detector (:mod:`.demo_detector`); ``frcnn`` runs
torchvision's Faster R-CNN from a local weights file (the ``detect`` extra). Either way a
region's feature ends with its 6 box position numbers, VinVL's layout. ``--shard I/N``
extracts share I of N of the images.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from tqdm.auto import tqdm

from ..core.errors import ConfigError, FormatError, MissingFileError, skip_or_raise
from ..core.extras import MissingExtra
from ..core.shards import shard_part
from ..formats.vinvl import write_vinvl_features, write_vinvl_predictions
from .demo_detector import DemoDetector
from .regions import Regions, box_position_features

__all__ = ["DETECTORS", "DemoDetector", "FasterRCNNDetector", "extract_features", "load_detector", "region_width"]



class FasterRCNNDetector:
    """torchvision's ``fasterrcnn_resnet50_fpn`` from a local state-dict file, as a region extractor.

    A region's feature is the box head's pooled output for the final box (1024 values from
    the TwoMLPHead) followed by the 6 box position numbers: width 1030. The number of
    classes is read from the weights; ``classes`` names them (default: "class_<i>").
    Needs the optional extra ``mvptr[detect]`` (torchvision built for the installed torch).
    """

    FEAT_DIM = 1024  # the box head's pooled output

    def __init__(self, weights: str | Path, classes: Sequence[str] | None = None, score_threshold: float = 0.2,
                 max_regions: int = 50, device: str = "cpu"):
        try:
            from torchvision.models.detection import fasterrcnn_resnet50_fpn
        except (ImportError, RuntimeError, OSError) as err:  # also a torchvision built for another torch
            raise MissingExtra(
                f"the frcnn detector needs torchvision built for torch {torch.__version__} "
                f"(pip install 'mvptr[detect]'); importing it failed: {err}") from None
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "roi_heads.box_predictor.cls_score.weight" not in state:
            raise FormatError(f"{weights}: expected a fasterrcnn_resnet50_fpn state dict "
                              f"(roi_heads.box_predictor.cls_score.weight not found)")
        num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
        self.model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                             box_score_thresh=score_threshold, box_detections_per_img=max_regions)
        self.model.load_state_dict(state)  # strict: a partial load would be silently wrong
        self.model.eval().to(device)
        self.device = device
        self.classes = list(classes) if classes else [f"class_{i}" for i in range(num_classes)]
        if len(self.classes) != num_classes:
            raise FormatError(f"{weights}: {num_classes} classes in the weights, {len(self.classes)} names given")

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray], batch_size: int = 4, progress: bool = False) -> list[Regions]:
        m, out = self.model, []
        for start in tqdm(range(0, len(images), batch_size), desc="detecting regions", disable=not progress):
            # np.array copies: images read through PIL are read-only arrays, which torch warns about
            batch = [torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255).to(self.device)
                     for im in images[start:start + batch_size]]
            sizes = [tuple(t.shape[-2:]) for t in batch]
            image_list, _ = m.transform(batch)
            maps = m.backbone(image_list.tensors)
            proposals, _ = m.rpn(image_list, maps)
            dets, _ = m.roi_heads(maps, proposals, image_list.image_sizes)
            # the box head's pooled features of the final boxes, in the resized image's coordinates
            pooled = m.roi_heads.box_head(m.roi_heads.box_roi_pool(maps, [d["boxes"] for d in dets],
                                                                    image_list.image_sizes))
            dets = m.transform.postprocess(dets, image_list.image_sizes, sizes)
            first = 0
            for det, (h, w) in zip(dets, sizes):
                n = len(det["boxes"])
                boxes = det["boxes"].cpu().numpy().astype(np.float32)
                feats = np.concatenate([pooled[first:first + n].cpu().numpy(), box_position_features(boxes, w, h)], 1)
                first += n
                out.append(Regions(boxes=boxes, features=feats.astype(np.float32),
                                   tags=[self.classes[c] for c in det["labels"].tolist()],
                                   confs=det["scores"].cpu().numpy().astype(np.float32), image_w=w, image_h=h))
        return out



IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DETECTORS = ("demo", "frcnn")


def load_detector(kind: str, weights: str | Path | None, device: str = "cpu"):
    """A detector of ``kind`` ("demo": a :class:`DemoDetector` safetensors file; "frcnn": a
    :class:`FasterRCNNDetector` state-dict file, run on ``device``) from ``weights``."""
    if kind not in DETECTORS:
        raise ConfigError(f"unknown detector {kind!r} (expected 'demo' or 'frcnn')")
    if weights is None:
        raise ConfigError(f"the {kind} detector needs --weights"
                         + (", a fasterrcnn_resnet50_fpn state-dict file" if kind == "frcnn" else ""))
    if not Path(weights).is_file():
        raise MissingFileError(f"{weights}: {kind} detector weights not found"
                                + (" (written by `mvptr prepare demo`)" if kind == "demo" else ""))
    if kind == "frcnn":
        return FasterRCNNDetector(weights, device=device)
    try:
        return DemoDetector.load(weights)
    except (SafetensorError, KeyError, RuntimeError) as err:  # another file, or another detector's weights
        raise FormatError(f"{weights}: not a demo detector's safetensors file ({str(err)[:160]})") from None


def region_width(detector) -> int:
    """The width of the region features ``detector`` gives (its appearance features and the 6
    box numbers)."""
    return (detector.feat_dim if isinstance(detector, DemoDetector) else FasterRCNNDetector.FEAT_DIM) + 6


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise FormatError(f"{path}: expected an image file: {err}", "unreadable image") from None


def extract_features(images_dir: str | Path, out_dir: str | Path, detector: str = "demo",
                     weights: str | Path | None = None, batch_size: int = 64, progress: bool = True,
                     *, skip=None, device: str = "cpu", part: tuple[int, int] | None = None) -> dict:
    """Run a detector over every image file of ``images_dir`` and write VinVL files to ``out_dir``.

    Writes ``features.tsv`` and ``predictions.tsv`` (each with its ``.lineidx``) and
    ``imageid2idx.json``; the image id is the file name without its suffix. ``detector`` is
    "demo" (a :class:`DemoDetector` safetensors file, default ``data/demo/detector.safetensors``)
    or "frcnn" (:class:`FasterRCNNDetector`, ``weights`` a state-dict file, run on ``device``). With ``skip`` (a
    ``SkippedSamples``), an unreadable image is left out and recorded there. With ``part`` =
    (I, N), only share I of N of the files (in name order) is read.
    """
    t0 = time.perf_counter()
    images_dir, out = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FormatError(f"{images_dir}: image directory not found")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FormatError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in files]
    counts = Counter(stems)  # not stems.count per stem: quadratic in a folder of a million images
    dup = next((s for s in stems if counts[s] > 1), None)
    if dup is not None:
        raise FormatError(f"{images_dir}: several files give image id {dup!r}")
    files = shard_part(files, part)  # after the check: shards together hold every id once
    if detector == "demo":
        weights = weights or "data/demo/detector.safetensors"
    model = load_detector(detector, weights, device)
    out.mkdir(parents=True, exist_ok=True)
    predictions, ids, stats = [], [], {"regions": 0, "dim": None}

    def features():
        bar = tqdm(total=len(files), desc="extract", unit="img", disable=not progress)
        for lo in range(0, len(files), batch_size):
            chunk, pixels = [], []
            for path in files[lo:lo + batch_size]:
                try:
                    pixels.append(_read_image(path))
                    chunk.append(path.stem)
                except FormatError as err:
                    skip_or_raise(skip, err)
            for image_id, regions in zip(chunk, model.detect(pixels) if pixels else []):
                predictions.append((image_id, regions.prediction()))
                ids.append(image_id)
                stats["regions"] += len(regions)
                stats["dim"] = regions.features.shape[1]
                yield image_id, regions.features
            bar.update(len(files[lo:lo + batch_size]))
        bar.close()

    write_vinvl_features(out / "features.tsv", features())
    write_vinvl_predictions(out / "predictions.tsv", predictions)
    (out / "imageid2idx.json").write_text(json.dumps({i: k for k, i in enumerate(ids)}), encoding="utf-8")
    return {"out_dir": str(out), "detector": detector, "weights": str(weights), "num_images": len(ids),
            "num_regions": stats["regions"], "feat_dim": stats["dim"],
            "seconds": round(time.perf_counter() - t0, 1)}
