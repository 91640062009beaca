"""Winoground-style groups of the demo world: two newly rendered images and two captions of the
same words in another order, caption k true of image k only.

* ``winoground_relation``: the same two shapes with their places exchanged. Image 0 shows
  "a big red circle above a small blue square", image 1 "a small blue square above a big red
  circle";
* ``winoground_attribute``: the same two shapes in the same places with their colours
  exchanged: "a big red circle above a small blue square" against "a big blue circle above a
  small red square".

The images are drawn as the world draws its scenes (``scenes.render_placed``), without a
distractor, two shapes of different shape and colour in a clear relation, and their regions
come from the world's own detector (``detector.safetensors``), as the world's features do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.config import Config
from ..core.errors import ConfigError
from ..data.pretrain import ImageSource
from ..eval.probes import ProbeSet
from ..vision.demo_detector import DemoDetector
from .probes import CLEAR, Mention, Statement, holds
from .scenes import _GAP, _MARGIN, COLORS, RELATIONS, SHAPES, SIZE_WORDS, SIZES, footprint, relation, render_placed

__all__ = ["GROUP_KINDS", "add_groups", "group_scenes"]

GROUP_KINDS = ("winoground_relation", "winoground_attribute")
_FIRST = {"above": True, "left": True, "below": False, "right": False}  # the subject takes the first slot
_VERTICAL = {"above": True, "below": True, "left": False, "right": False}


def _centres(rng: np.random.Generator, footprints, vertical: bool, size: int):
    """Two slots along one axis, far enough apart for either shape in either, level across it."""
    along = [f[1] if vertical else f[0] for f in footprints]
    across = [f[0] if vertical else f[1] for f in footprints]
    half, half_across = max(along) / 2, max(across) / 2
    lo, hi = _MARGIN + half + 1, size - _MARGIN - half - 1
    first = rng.uniform(lo, hi - 2 * half - _GAP - 2)
    second = rng.uniform(first + 2 * half + _GAP + 2, hi)
    level = rng.uniform(_MARGIN + half_across + 1, size - _MARGIN - half_across - 1)
    jitter = rng.uniform(-2, 2, 2)
    return [(level + jitter[0], first), (level + jitter[1], second)] if vertical else \
        [(first, level + jitter[0]), (second, level + jitter[1])]


def _statement(kinds, words: list[str], rel: str) -> Statement:
    """"a <size> <colour> <shape> <relation> a <size> <colour> <shape>" of two shapes' (shape, colour,
    size); ``words``: the two size words and the relation's wording."""
    (s1, c1, _), (s2, c2, _) = kinds
    return Statement(Mention(words[0], c1, s1), rel, words[2], Mention(words[1], c2, s2))


def group_scenes(rng: np.random.Generator, kind: str, image_size: int = 96, tries: int = 50):
    """One group: ([image 0, image 1] pixels, [objects 0, objects 1], [caption 0, caption 1] as
    Statements), caption k true of image k and false of the other."""
    if kind not in GROUP_KINDS:
        raise ConfigError(f"unknown group kind {kind!r} (expected one of {', '.join(GROUP_KINDS)})")
    for _ in range(tries):
        shapes = [str(s) for s in rng.choice(SHAPES, 2, replace=False)]
        colors = [str(c) for c in rng.choice(list(COLORS), 2, replace=False)]
        sizes = [str(rng.choice(SIZES)) for _ in range(2)]
        rel = str(rng.choice(list(RELATIONS)))
        words = [str(rng.choice(SIZE_WORDS[z])) for z in sizes] + [str(rng.choice(RELATIONS[rel]))]
        kinds0 = [(shapes[0], colors[0], sizes[0]), (shapes[1], colors[1], sizes[1])]
        footprints = [footprint(s, z, image_size, rng) for s, _, z in kinds0]
        slots = _centres(rng, footprints, _VERTICAL[rel], image_size)
        if not _FIRST[rel]:
            slots = slots[::-1]  # the subject (shape 0) in the second slot
        if kind == "winoground_relation":  # shape 1 where shape 0 was and the other way round
            kinds1, footprints1, slots1 = kinds0[::-1], footprints[::-1], slots
        else:  # the same shapes in the same places, colours exchanged
            kinds1 = [(shapes[0], colors[1], sizes[0]), (shapes[1], colors[0], sizes[1])]
            footprints1, slots1 = footprints, slots
        drawn = [render_placed(rng, kinds0, footprints, slots, image_size),
                 render_placed(rng, kinds1, footprints1, slots1, image_size)]
        if any(d is None for d in drawn):
            continue
        captions = [_statement(kinds0, words, rel), _statement(kinds1, words if kind != "winoground_relation"
                                                               else [words[1], words[0], words[2]], rel)]
        objects = [d[1] for d in drawn]
        clear = all(relation(o[0], o[1])[1] >= CLEAR for o in objects)
        if clear and all(holds(objects[k], captions[k]) and not holds(objects[1 - k], captions[k]) for k in (0, 1)):
            return [d[0] for d in drawn], objects, captions
    raise RuntimeError(f"could not render a {kind} group in {tries} tries")


class _Rendered(dict):
    """Detections of rendered images by id, as a feature store serves them."""

    def detections(self, image_id: str) -> dict:
        return self[image_id]


def add_groups(probes: ProbeSet, captions, cfg: Config, world: dict, progress: bool = True) -> None:
    """Append ``demo.probe_groups`` groups of each kind to ``probes``: their images (regions from
    the world's detector) and captions (``captions``: words -> index in ``probes.captions``)."""
    n = cfg.demo.probe_groups
    if n < 0:
        raise ConfigError(f"demo.probe_groups={n}: Winoground groups of each kind; set 0 (none) or more")
    if n == 0:
        return
    path = Path(cfg.demo.data_dir) / "detector.safetensors"
    if not path.exists():
        raise ConfigError(f"{path}: not found; the demo world's detector makes the Winoground probes' regions "
                          "(set demo.probe_groups=0 to probe without them)")
    detector = DemoDetector.load(path)
    rng = np.random.default_rng(np.random.SeedSequence([world["seed"], 8]))
    pixels, rows = [], {}
    for kind in GROUP_KINDS:
        rows[kind] = []
        for _ in range(n):
            images, _, statements = group_scenes(rng, kind, world["image_size"])
            first = len(probes.images) + len(pixels)
            pixels += images
            rows[kind].append((first, first + 1, captions(statements[0].words), captions(statements[1].words)))
    regions = detector.detect(pixels, progress=progress)
    store = _Rendered({str(k): {"region_feats": r.features, "boxes": r.boxes, "classes": list(r.tags), "confs": r.confs,
                                "width": float(r.image_w), "height": float(r.image_h)} for k, r in enumerate(regions)})
    d = cfg.data
    source = ImageSource.of_store(store, d.max_regions, d.max_tags, dedupe_tags=d.dedupe_tags)
    probes.images += [source(str(k)) for k in range(len(regions))]
    probes.groups.update(rows)
