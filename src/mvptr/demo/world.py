"""The demo world: a synthetic image-caption dataset written in the real dataset formats.

Each image shows 2-4 coloured shapes on a light, slightly textured background; each
caption describes some of them with their size and colour and, mostly, the spatial
relation between two of them, computed from the true geometry. ``generate_demo_world``
renders the scenes, trains the demo detector on the training images' pixels, runs it
on every image and writes everything the real pipelines read:

* ``images/<image_id>.png``;
* ``captions.json``: Karpathy-split JSON (train / val / test);
* ``features.tsv`` + ``.lineidx`` and ``predictions.tsv`` + ``.lineidx``: VinVL-style
  region features and detections;
* ``flickr30k_entities/{Sentences,Annotations}/`` for every image: the captions with
  their object mentions in brackets, and the objects' true boxes;
* ``vqa/`` (VQA v2 questions and annotations) and ``snli_ve/`` (SNLI-VE hypotheses) for the
  downstream tasks (see ``demo_tasks.py``);
* ``detector.safetensors`` and ``world.json`` (vocabulary, counts, detector accuracy).

Caption wordings were chosen so that SceneGraphParser (spaCy backend) finds each shape
as an entity with its size and colour as modifiers and the relation as an edge between
the two shapes; e.g. "left of" parses that way while "to the left of" yields an entity
"left", and "right of" only after "just". One known miss: the small spaCy model often
reads "teal" after a size word as a noun ("a big teal star" -> entity "teal star").
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..core.config import DemoConfig
from ..core.fileio import write_json
from ..core.validation import check_world_size
from ..formats.captions import write_karpathy_json
from ..formats.entities import write_flickr30k_entities
from ..formats.vinvl import write_vinvl_features, write_vinvl_predictions
from ..vision.demo_detector import DemoDetector
from ..vision.regions import box_iou
from .scenes import COLORS, RELATIONS, SHAPES, SIDE_BY_SIDE, SIZE_WORDS, SIZES, WorldObject, world_scenes
from .tasks import write_demo_tasks

__all__ = ["generate_demo_world", "turned_pair_count"]







def _detection_quality(regions, objects: list[list[WorldObject]]) -> dict:
    """Recall of true shapes at IoU 0.5, tag accuracy on them, and extra regions per image."""
    found = correct = extra = total = 0
    for reg, objs in zip(regions, objects):
        total += len(objs)
        if not len(reg):
            continue
        iou = box_iou(np.asarray([o.box for o in objs], dtype=np.float32), reg.boxes)
        matched = set()
        for k, o in enumerate(objs):
            best = int(iou[k].argmax())
            if iou[k, best] >= 0.5 and best not in matched:
                matched.add(best)
                found += 1
                correct += reg.tags[best] == o.shape
        extra += len(reg) - len(matched)
    return {"recall@0.5": round(found / max(total, 1), 4), "tag_accuracy": round(correct / max(found, 1), 4),
            "extra_regions_per_image": round(extra / max(len(regions), 1), 4)}


def _fit_detector(detector: DemoDetector, images: list, objects: list, epochs: int, seed: int,
                  progress: bool) -> dict:
    """Train the detector on the training scenes' pixels and their shapes' boxes and kinds."""
    labels = [[{"box": o.box, "shape": o.shape, "color": o.color, "size": o.size} for o in objs] for objs in objects]
    return detector.fit(images, labels, epochs=epochs, seed=seed, progress=progress)


def write_entities(out: Path, ids: list, splits: list, images: list, objects: list, captions: list) -> None:
    """Flickr30k Entities files of the val and test images: each caption's object mentions, entity
    ids the 1-based object numbers, boxes their xyxy pixel extents."""
    for image_id, split, img, objs, caps in zip(ids, splits, images, objects, captions):
        if split == "train":
            continue
        write_flickr30k_entities(
            out, image_id,
            [(c.words, [(s, e, k + 1) for s, e, k in c.mentions]) for c in caps],
            boxes={str(k + 1): [list(o.box)] for k, o in enumerate(objs)},
            width=img.shape[1], height=img.shape[0])


def turned_pair_count(turned_pairs: float, n_train: int) -> int:
    """How many turned pairs a world of ``n_train`` training images holds at the fraction ``turned_pairs``."""
    return int(turned_pairs * n_train / 2)


def render_images(out: Path, ids: list[str], scenes, progress: bool) -> tuple[list, list, list]:
    """Write each scene's pixels as ``<id>.png`` in ``out``; the scenes' (pixels, shapes, captions)."""
    images, objects, captions = [], [], []
    for image_id, (img, objs, caps) in zip(ids, tqdm(scenes, total=len(ids), desc="rendering scenes", unit="image",
                                                     disable=not progress)):
        Image.fromarray(img).save(out / f"{image_id}.png", compress_level=1)
        images.append(img)
        objects.append(objs)
        captions.append(caps)
    return images, objects, captions


def generate_demo_world(
    out_dir: str | os.PathLike,
    n_train: int = DemoConfig.n_train,
    n_val: int = DemoConfig.n_val,
    n_test: int = DemoConfig.n_test,
    seed: int = 0,
    image_size: int = DemoConfig.image_size,
    *,
    detector_epochs: int = 8,
    feat_dim: int = 128,
    distractor_prob: float = 0.2,
    turned_pairs: float = DemoConfig.turned_pairs,
    progress: bool = True,
    on_captions: Callable[[], object] | None = None,
) -> dict:
    """Render the demo world into ``out_dir`` (see the module docstring) and return its summary.
    ``on_captions`` is called once ``captions.json`` is written, before the detector trains.

    Deterministic given ``seed``: images and captions come from numpy generators seeded
    by it, and the detector is trained with it. Image ids are the zero-padded running
    numbers of the train, then val, then test images. A fraction ``turned_pairs`` of the
    training images come in pairs, a scene and its half turn (see ``render_turned_pair``), whose
    captions all state a directed relation; ``batch_groups.json`` lists the pairs (``data.batch_groups``
    then puts the two in one batch).
    """
    check_world_size(n_train, n_val, n_test, image_size, {k: k for k in ("n_train", "n_val", "n_test", "image_size")})
    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    n_total = n_train + n_val + n_test
    width = max(6, len(str(n_total - 1)))
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    ids = [f"{i:0{width}d}" for i in range(n_total)]
    n_paired = 2 * turned_pair_count(turned_pairs, n_train)
    scenes = world_scenes(seed, n_total, image_size, distractor_prob, n_paired)
    images, objects, captions = render_images(out / "images", ids, scenes, progress)
    write_json(out / "batch_groups.json", {"groups": [ids[k:k + 2] for k in range(0, n_paired, 2)]})

    write_karpathy_json(out / "captions.json", [
        {"filename": f"{image_id}.png", "imgid": i, "split": split, "sentences": [c.raw for c in caps]}
        for i, (image_id, split, caps) in enumerate(zip(ids, splits, captions))
    ], dataset="demo")
    if on_captions is not None:
        on_captions()

    write_entities(out / "flickr30k_entities", ids, splits, images, objects, captions)

    detector = DemoDetector(SHAPES, list(COLORS), SIZES, feat_dim=feat_dim)
    accuracy = _fit_detector(detector, images[:n_train], objects[:n_train], detector_epochs, seed, progress)
    regions = detector.detect(images, progress=progress)
    detector.save(out / "detector.safetensors")
    write_vinvl_features(out / "features.tsv", ((i, r.features) for i, r in zip(ids, regions)))
    write_vinvl_predictions(out / "predictions.tsv", ((i, r.prediction()) for i, r in zip(ids, regions)))

    tasks = write_demo_tasks(out, ids, splits, objects, captions, image_size, seed=seed)

    test = slice(n_train + n_val, n_total)
    world = {
        "seed": seed,
        "image_size": image_size,
        "shapes": list(SHAPES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "sizes": list(SIZES),
        "size_words": {k: list(v) for k, v in SIZE_WORDS.items()},
        "relations": [r for words in RELATIONS.values() for r in words] + list(SIDE_BY_SIDE),
        "splits": {"train": n_train, "val": n_val, "test": n_test},
        "turned_pairs": n_paired // 2,
        "num_objects": sum(len(o) for o in objects),
        "num_captions": sum(len(c) for c in captions),
        "num_regions": sum(len(r) for r in regions),
        "tasks": tasks,
        "region_feature_dim": feat_dim + 6,
        "detector": {"config": detector.config, "accuracy": accuracy,
                     "test_detection": _detection_quality(regions[test], objects[test])},
    }
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return {**world, "out_dir": str(out), "seconds": round(time.perf_counter() - t0, 1)}
