"""Phrase grounding: the region each Flickr30k Entities mention of a sentence is grounded to (the
computation of ``eval.grounding``), next to the true box (paper Figure 5)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import FormatError
from ..core.extras import needs
from ..data.builders import collator, image_source, phrase_lookup
from ..data.grounding import grounding_examples
from ..data.pretrain import data_captions
from ..eval.grounding import choose_regions
from ..vision.regions import box_iou, ground_truth_box
from .common import draw_box, new_figure, region_colors, save_png, show_image


def _split_of(cfg, image_id: str) -> str:
    for r in data_captions(cfg.data):
        if r.image_id == image_id:
            return r.split
    raise FormatError(f"{cfg.data.captions}: no captions for image {image_id!r}", "image not found")
@dataclass
class SentenceGrounding:
    image_id: str
    sentence_index: int
    sentence: str
    labels: list[str]  # each mention's word pieces, decoded
    regions: list[int]  # index of the chosen region per mention (-1: the image has no regions)
    gt_boxes: list[np.ndarray]  # per mention: (k, 4) true boxes of its entity
    det_boxes: np.ndarray  # (R, 4) detected boxes, in model input order
    det_classes: list[str] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
def _grounding_example(bundle, cfg, image_id: str, sentence_index: int | None):
    lookup = phrase_lookup(cfg, bundle.phrase_vocab, _split_of(cfg, image_id))
    examples = grounding_examples(cfg.eval.entities_dir, [image_id], bundle.tokenizer, cfg.data.max_tokens, lookup)
    for ex in examples:
        if sentence_index is None or ex["sentence_index"] == sentence_index:
            return ex
    which = "any sentence" if sentence_index is None else f"sentence {sentence_index}"
    raise FormatError(f"{cfg.eval.entities_dir}: no boxed mentions in {which} of image {image_id!r}")
def ground_sentence(bundle, cfg, image_id: str, sentence_index: int | None = None) -> SentenceGrounding:
    """Ground the Flickr30k Entities mentions of one sentence (None: the image's first
    sentence with boxed mentions) exactly as ``evaluate_grounding`` does."""
    ex = _grounding_example(bundle, cfg, image_id, sentence_index)
    source = image_source(cfg)
    image = source(image_id)
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = {k: v.to(cfg.device) for k, v in collator(cfg, bundle)([{**ex, **image}]).items()}
            chosen = choose_regions(model, batch, [ex["mentions"]])[0]
    finally:
        model.train(was_training)
    ids = ex["input_ids"]
    labels = [bundle.tokenizer.decode([ids[p] for p in pos]) for pos, _ in ex["mentions"]]
    classes = list(source.store.detections(image_id)["classes"])[: len(image["boxes"])]
    sentence = bundle.tokenizer.decode(ids, skip_special_tokens=True)
    return SentenceGrounding(
        image_id, ex["sentence_index"], sentence, labels, chosen,
        [np.asarray(b, dtype=np.float32).reshape(-1, 4) for _, b in ex["mentions"]],
        np.asarray(image["boxes"], dtype=np.float32), classes, float(image["width"]), float(image["height"]),
    )
def plot_grounding(bundle, cfg, image_id: str, sentence_index: int | None, out_png) -> tuple[Path, list[int]]:
    """The image with, for each mention of the sentence, the chosen region (solid, labelled
    with the phrase) and the true box (dashed, same colour). Returns the PNG's path and the
    chosen region indices (one per mention, in sentence order)."""
    g = ground_sentence(bundle, cfg, image_id, sentence_index)
    colors = region_colors(len(g.labels))
    fig = new_figure(9.6, 5.2)
    ax, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 0.85]})
    show_image(ax, cfg, image_id, g.width, g.height)
    legend = []
    shared: dict[int, int] = {}  # region -> mentions already drawn on it
    inset = 0.012 * max(g.width, g.height)
    for i, (label, r, gt) in enumerate(zip(g.labels, g.regions, g.gt_boxes)):
        merged = ground_truth_box(gt, "merged")[0]
        draw_box(ax, merged, colors[i], dashed=True, lw=1.6)
        if r < 0:
            legend.append((colors[i], f"{label}\n  no regions detected"))
            continue
        k = shared.get(r, 0)
        shared[r] = k + 1
        det = g.det_boxes[r]
        # several mentions on one region: nested boxes and stacked labels
        draw_box(ax, det + np.array([1, 1, -1, -1]) * k * inset, colors[i])
        top = det[1] > 0.08 * g.height  # room for the label above the box
        ax.annotate(label, (det[0], det[1]), xytext=(1, (3 + 14 * k) if top else -(3 + 14 * k)),
                    textcoords="offset points", va="bottom" if top else "top", ha="left", color="white", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.15", "fc": colors[i], "ec": "none", "alpha": 0.9})
        iou = float(box_iou(det[None], merged[None])[0, 0])
        cls = f" ({g.det_classes[r]})" if r < len(g.det_classes) else ""
        verdict = "hit" if iou > 0.5 else "miss"
        legend.append((colors[i], f"{label}\n  \u2192 region {r}{cls}: IoU {iou:.2f}, {verdict}"))
    ax.set_title(f"image {image_id}, sentence {g.sentence_index}", fontsize=10)
    side.axis("off")
    wrapped = textwrap.wrap(f"\u201c{g.sentence}\u201d", 48)
    side.text(0.0, 1.0, "\n".join(wrapped), transform=side.transAxes, va="top", fontsize=10, style="italic")
    y = 0.94 - 0.05 * len(wrapped)
    for color, text in legend:
        side.add_patch(_legend_swatch(side, y, color))
        side.text(0.08, y, text, transform=side.transAxes, va="top", fontsize=9)
        y -= 0.06 * (text.count("\n") + 1) + 0.03
    side.text(0.0, 0.02, "solid: chosen region    dashed: true box", transform=side.transAxes, fontsize=8,
              color="0.35")
    fig.tight_layout()
    return save_png(fig, out_png), list(g.regions)
def _legend_swatch(ax, y: float, color):
    with needs("viz"):
        from matplotlib.patches import Rectangle

    return Rectangle((0.0, y - 0.035), 0.05, 0.035, transform=ax.transAxes, fc=color, ec="none")
def first_grounding_sentence(bundle, cfg, split: str | None = None) -> tuple[str, int]:
    """(image id, sentence index) of the first image of ``split`` (default: the evaluation
    split) with a sentence that has boxed Flickr30k Entities mentions."""
    split = split or cfg.eval.split
    entities = Path(cfg.eval.entities_dir)
    for image_id in sorted({r.image_id for r in data_captions(cfg.data, [split])}):
        if not (entities / "Annotations" / f"{image_id}.xml").exists():
            continue
        examples = grounding_examples(entities, [image_id], bundle.tokenizer, cfg.data.max_tokens, lambda *_: [])
        if examples:
            return image_id, examples[0]["sentence_index"]
    raise FormatError(f"{entities}: no {split} image has a sentence with boxed mentions")
