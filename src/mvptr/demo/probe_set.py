"""All compositional probes of a demo world: the pair probes of its test images
(``probes``) and the Winoground-style groups on newly rendered images (``probe_images``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core.config import Config
from ..core.errors import ConfigError
from ..data.pretrain import open_images
from ..eval.probes import ProbeSet
from .probe_images import add_groups
from .probes import PAIR_KINDS, CaptionIndex, image_probes
from .tasks import replay_world

__all__ = ["build_probe_set"]


def _world(data_dir: Path) -> dict:
    if not (data_dir / "world.json").exists():
        raise ConfigError(f"{data_dir}/world.json: not found; demo.data_dir must be a demo world "
                          "(made by `mvptr demo` or `mvptr prepare demo`)")
    return json.loads((data_dir / "world.json").read_text(encoding="utf-8"))


def build_probe_set(cfg: Config, split: str | None = None, progress: bool = True) -> ProbeSet:
    """The probes of the world in ``cfg.demo.data_dir``: the pair probes of each image of ``split``
    (default ``eval.split``), their regions from ``cfg.data``'s feature store, and
    ``demo.probe_groups`` Winoground groups of each kind on newly rendered images."""
    data_dir = Path(cfg.demo.data_dir)
    world = _world(data_dir)
    split = split or cfg.eval.split
    ids, splits, objects, _ = replay_world(data_dir)
    source = open_images(cfg.data, cfg.model.region_feat_dim)
    rng = np.random.default_rng(np.random.SeedSequence([world["seed"], 7]))  # fixed: the same probes every time
    captions, images = CaptionIndex(), []
    pairs: dict[str, list] = {k: [] for k in PAIR_KINDS}
    chosen = [(i, o) for i, s, o in zip(ids, splits, objects) if s == split]
    if not chosen:
        raise ConfigError(f"{data_dir}: no {split!r} images to probe (eval.split)")
    for image_id, objs in tqdm(chosen, desc="probes", unit="image", disable=not progress, leave=False):
        probes = image_probes(objs, rng)
        if probes is None:
            continue
        if image_id not in source:
            raise ConfigError(f"{cfg.data.features}: no regions of image {image_id} of the world in {data_dir}; "
                              "data.features must be that world's features")
        images.append(source(image_id))
        true, false = probes
        for kind, words in false.items():
            pairs[kind].append((len(images) - 1, captions(true), captions(words)))
    probe_set = ProbeSet(captions.texts, images, pairs)
    add_groups(probe_set, captions, cfg, world, progress)
    return probe_set
