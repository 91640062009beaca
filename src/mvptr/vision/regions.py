"""Detected image regions and box geometry shared by the detector, the data and evaluation.

Boxes are ``[x1, y1, x2, y2]`` in continuous pixel coordinates: a box covering pixel
columns 3..7 is ``x1 = 3, x2 = 8``, and its width is ``x2 - x1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import ConfigError

__all__ = ["Regions", "box_position_features", "box_iou", "ground_truth_box"]


def box_position_features(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """VinVL's 6 position numbers per box: ``[x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h]``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    corners = b / scale
    sizes = corners[:, 2:] - corners[:, :2]
    return np.concatenate([corners, sizes], axis=1).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (n, 4) with every box in ``b`` (m, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    # Degenerate (zero-area) pairs have no overlap to speak of: IoU 0, not NaN.
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class Regions:
    """The detector's output for one image, in VinVL's layout.

    ``features`` rows are ``[appearance embedding, 6 box position numbers]``, so its
    width is the embedding size + 6 (VinVL: 2048 + 6).
    """

    boxes: np.ndarray  # (n, 4) float32, xyxy pixels
    features: np.ndarray  # (n, D) float32
    tags: list[str]  # predicted class name per region
    confs: np.ndarray  # (n,) float32, probability of the predicted class
    image_w: int
    image_h: int

    def __len__(self) -> int:
        return len(self.tags)

    def prediction(self) -> dict:
        """The VinVL ``predictions.tsv`` JSON of this image."""
        return {
            "image_h": int(self.image_h),
            "image_w": int(self.image_w),
            "num_boxes": len(self),
            "objects": [
                {"rect": [round(float(v), 2) for v in box], "class": tag, "conf": round(float(conf), 4)}
                for box, tag, conf in zip(self.boxes, self.tags, self.confs)
            ],
        }


def ground_truth_box(boxes: list, protocol: str) -> np.ndarray:
    """A mention's ground truth: the union of its entity's boxes ("merged", the original
    Flickr30k Entities protocol) or each of them ("any")."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if protocol == "merged":
        return np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])[None]
    if protocol == "any":
        return b
    raise ConfigError(f"unknown grounding protocol {protocol!r} (expected 'merged' or 'any')")
