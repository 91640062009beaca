"""The demo detector: VinVL's role (regions, region features, object tags) for the demo world.

Two stages, like a two-stage detector:

1. proposals from pixels, with no learning: pixels that differ from the background
   colour (estimated from the image border) are grouped into 8-connected components,
   and each component large enough gives its bounding box;
2. a small CNN looks at a square crop around each proposal and classifies its shape,
   colour and size. Its penultimate layer is the region's appearance feature and the
   shape head gives the object tag and its confidence.

A region's feature vector is ``[CNN embedding (feat_dim), 6 box position numbers]``,
VinVL's layout (2048 + 6) at a smaller width. Everything in it is computed from the
image pixels and the detected box; labels are only used as training targets.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from ..core.errors import ConfigError, FormatError
from .regions import Regions, box_position_features

ATTRIBUTES = ("shape", "color", "size")
@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: the CNN is small enough that more gain little, while
    OpenMP threads slow down many times over when another process holds a core. It also
    makes training results independent of the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
class DemoDetector(nn.Module):
    """Proposals from colour differences + a CNN that classifies and embeds each proposal.

    Args:
        shapes, colors, sizes: class names of the three heads; tags are shape names.
        feat_dim: width of the appearance embedding (region features have feat_dim + 6).
        crop_size: side of the square crop the CNN sees (a multiple of 8).
        fg_threshold: a pixel is foreground when a channel differs from the background
            colour by more than this (0-255 scale).
        min_area: components with fewer foreground pixels are ignored.
        context: the crop's side is ``context * max(box w, box h) + 2`` pixels, so the CNN
            sees the object's outline against the background.
    """

    def __init__(
        self,
        shapes: Sequence[str],
        colors: Sequence[str],
        sizes: Sequence[str],
        feat_dim: int = 128,
        crop_size: int = 24,
        fg_threshold: float = 40.0,
        *, min_area: int = 10,
        context: float = 1.25,
    ):
        super().__init__()
        if crop_size % 8:
            raise ConfigError(f"crop_size must be a multiple of 8, got {crop_size}")
        self.config = {
            "shapes": list(shapes), "colors": list(colors), "sizes": list(sizes),
            "feat_dim": int(feat_dim), "crop_size": int(crop_size), "fg_threshold": float(fg_threshold),
            "min_area": int(min_area), "context": float(context),
        }
        self.classes = {"shape": list(shapes), "color": list(colors), "size": list(sizes)}
        self.feat_dim, self.crop_size = int(feat_dim), int(crop_size)
        self.backbone = nn.Sequential(
            _conv(3, 16), nn.MaxPool2d(2),
            _conv(16, 32), nn.MaxPool2d(2),
            _conv(32, 64), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        # Crops are rescaled to a fixed size, so the box's size relative to the image (its
        # longer and shorter side) is added to the embedding: it is what tells small from
        # big. It is standardised with statistics averaged over all of training (they do
        # not depend on the weights) and has its own input layer: with a fan-in of 2 its
        # initial weights are large, whereas as 2 more inputs beside the conv features
        # it was learnt far more slowly.
        self.size_norm = nn.BatchNorm1d(2, momentum=None)
        self.size_embed = nn.Linear(2, feat_dim, bias=False)
        self.embed = nn.Linear(64 * (crop_size // 8) ** 2, feat_dim)
        self.heads = nn.ModuleDict({a: nn.Linear(feat_dim, len(self.classes[a])) for a in ATTRIBUTES})

    # ------------------------------------------------------------------ network

    def forward(self, crops: torch.Tensor, box_sizes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """crops (N, 3, c, c) normalised pixels, box_sizes (N, 2) -> embedding (N, feat_dim), logits."""
        emb = F.relu(self.embed(self.backbone(crops)) + self.size_embed(self.size_norm(box_sizes)))
        return emb, {a: head(emb) for a, head in self.heads.items()}

    def _inputs(self, pixels: torch.Tensor, img_idx: np.ndarray,
                boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN inputs for ``boxes`` (N, 4) of images ``pixels[img_idx]`` (uint8, (B, 3, H, W)).

        Returns square crops (N, 3, c, c) around the boxes, normalised (outside the image
        the border pixels, i.e. background, are repeated), and the box sizes (N, 2).
        """
        h, w = pixels.shape[2:]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = (boxes[:, 2:] - boxes[:, :2]).max(1) * self.config["context"] + 2
        # affine_grid works in [-1, 1] coordinates spanning the whole image (align_corners=False).
        theta = np.zeros((len(boxes), 2, 3), dtype=np.float32)
        theta[:, 0, 0] = side / w
        theta[:, 1, 1] = side / h
        theta[:, 0, 2] = centre[:, 0] / w * 2 - 1
        theta[:, 1, 2] = centre[:, 1] / h * 2 - 1
        grid = F.affine_grid(torch.from_numpy(theta), [len(boxes), 3, self.crop_size, self.crop_size],
                             align_corners=False)
        crops = F.grid_sample(pixels[torch.from_numpy(np.asarray(img_idx))].float(), grid, mode="bilinear",
                              padding_mode="border", align_corners=False)
        rel = (boxes[:, 2:] - boxes[:, :2]) / np.array([w, h], dtype=np.float32)
        sizes = np.stack([rel.max(1), rel.min(1)], 1)
        return (crops / 255.0 - 0.5) / 0.25, torch.from_numpy(sizes)

    # ------------------------------------------------------------------ proposals

    def propose(self, image: np.ndarray) -> np.ndarray:
        """Boxes (n, 4) float32 of the foreground components of an HxWx3 uint8 image, in raster order."""
        img = np.asarray(image, dtype=np.int16)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        background = np.median(border, axis=0)
        foreground = np.abs(img - background).max(-1) > self.config["fg_threshold"]
        labels, n = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        boxes = [
            [sx.start, sy.start, sx.stop, sy.stop]
            for (sy, sx), area in zip(ndimage.find_objects(labels), areas)
            if area >= self.config["min_area"]
        ]
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    # ------------------------------------------------------------------ training

    def _targets(self, objects: Sequence[Sequence[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image index (N,), box (N, 4), class index per attribute (N, 3)) of all objects."""
        index = {a: {name: i for i, name in enumerate(self.classes[a])} for a in ATTRIBUTES}
        img_idx, boxes, labels = [], [], []
        for i, objs in enumerate(objects):
            for obj in objs:
                img_idx.append(i)
                boxes.append(obj["box"])
                labels.append([index[a][obj[a]] for a in ATTRIBUTES])
        return (np.asarray(img_idx, dtype=np.int64), np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64).reshape(-1, len(ATTRIBUTES)))

    @torch.no_grad()
    def _accuracy(self, images: torch.Tensor, img_idx: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                  batch_size: int = 512) -> dict[str, float]:
        self.eval()
        correct = np.zeros(len(ATTRIBUTES))
        for start in range(0, len(img_idx), batch_size):
            sl = slice(start, start + batch_size)
            _, logits = self(*self._inputs(images, img_idx[sl], boxes[sl]))
            for k, a in enumerate(ATTRIBUTES):
                correct[k] += (logits[a].argmax(1).numpy() == labels[sl, k]).sum()
        n = max(len(img_idx), 1)
        return {a: round(float(correct[k] / n), 4) for k, a in enumerate(ATTRIBUTES)}

    @_one_thread()
    def fit(
        self,
        images: Sequence[np.ndarray],
        objects: Sequence[Sequence[dict]],
        epochs: int = 8,
        seed: int = 0,
        batch_size: int = 128,
        lr: float = 3e-3,
        *, holdout: float = 0.1,
        jitter: float = 0.08,
        progress: bool = True,
    ) -> dict:
        """Train the CNN on ground-truth object crops of ``images``.

        ``images`` are HxWx3 uint8 arrays of one size; ``objects[i]`` lists image i's
        objects as dicts with "box" (xyxy pixels), "shape", "color" and "size". A
        ``holdout`` fraction of the images is kept out of training to measure accuracy on
        unseen crops. Training boxes are jittered by up
        to ``jitter`` of the box side, since proposals are not pixel-exact. The result is
        deterministic given ``seed`` (parameters are re-initialised from it).

        Returns accuracies per head on the training and held-out crops, e.g.
        ``{"train": {"shape": 0.99, ...}, "heldout": {...}, "train_crops": ..., ...}``.
        """
        t0 = time.perf_counter()
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, H, W)
        img_idx, boxes, labels = self._targets(objects)
        rng = np.random.default_rng(seed)
        n_held = int(round(holdout * len(images)))
        held_images = rng.permutation(len(images))[:n_held]
        held = np.isin(img_idx, held_images)
        train = np.flatnonzero(~held)
        if len(train) == 0:
            raise ConfigError("no training objects: give images with objects and holdout < 1")
        steps_per_epoch = math.ceil(len(train) / batch_size)
        total = epochs * steps_per_epoch

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            optimiser = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(total, 1),
                                                           pct_start=0.15)
            bar = tqdm(total=total, desc="training detector", unit="step", disable=not progress)
            for _ in range(epochs):
                self.train()
                for chunk in np.array_split(rng.permutation(train), steps_per_epoch):
                    b = boxes[chunk]
                    side = (b[:, 2:] - b[:, :2]).max(1, keepdims=True)
                    b = b + rng.uniform(-jitter, jitter, size=b.shape).astype(np.float32) * side
                    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 2)
                    _, logits = self(*self._inputs(pixels, img_idx[chunk], b))
                    target = torch.from_numpy(labels[chunk])
                    loss = sum(F.cross_entropy(logits[a], target[:, k]) for k, a in enumerate(ATTRIBUTES))
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    bar.update()
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.close()
        self.eval()
        held_idx = np.flatnonzero(held)
        return {
            "train": self._accuracy(pixels, img_idx[train], boxes[train], labels[train]),
            "heldout": self._accuracy(pixels, img_idx[held_idx], boxes[held_idx], labels[held_idx]),
            "train_crops": int(len(train)),
            "heldout_crops": int(len(held_idx)),
            "epochs": int(epochs),
            "seconds": round(time.perf_counter() - t0, 1),
        }

    # ------------------------------------------------------------------ inference

    @_one_thread()
    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray], batch_size: int = 128,
               progress: bool = False) -> list[Regions]:
        """Regions of each HxWx3 uint8 image: boxes, features (n, feat_dim + 6), tags, confidences."""
        self.eval()
        out: list[Regions] = []
        bar = tqdm(total=len(images), desc="detecting regions", unit="image", disable=not progress)
        start = 0
        while start < len(images):
            # A batch is a run of images of one size, so that they stack into one tensor.
            end = start + 1
            while end < min(start + batch_size, len(images)) and images[end].shape == images[start].shape:
                end += 1
            batch = np.stack(images[start:end])
            h, w = batch.shape[1:3]
            proposals = [self.propose(im) for im in batch]
            img_idx = np.repeat(np.arange(len(batch)), [len(b) for b in proposals])
            boxes = np.concatenate(proposals)
            if len(boxes):
                emb, logits = self(*self._inputs(torch.from_numpy(batch).permute(0, 3, 1, 2), img_idx, boxes))
                confs, classes = logits["shape"].softmax(1).max(1)
            else:  # nothing but background in the whole batch
                emb, confs = torch.zeros(0, self.feat_dim), torch.zeros(0)
                classes = torch.zeros(0, dtype=torch.long)
            feats = np.concatenate([emb.numpy(), box_position_features(boxes, w, h)], axis=1)
            tags = [self.classes["shape"][c] for c in classes.tolist()]
            first = 0
            for b in proposals:
                sl = slice(first, first + len(b))
                first += len(b)
                out.append(Regions(boxes=b, features=feats[sl], tags=tags[sl], confs=confs[sl].numpy(),
                                   image_w=w, image_h=h))
            bar.update(end - start)
            start = end
        bar.close()
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Weights to a safetensors file; the configuration (class names included) goes in its metadata."""
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"config": json.dumps(self.config)})

    @classmethod
    def load(cls, path: str | Path) -> "DemoDetector":
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "config" not in metadata:
                raise FormatError(f"{path}: no detector config in the safetensors metadata")
            state = {k: f.get_tensor(k) for k in f.keys()}
        detector = cls(**json.loads(metadata["config"]))
        detector.load_state_dict(state)
        return detector.eval()
