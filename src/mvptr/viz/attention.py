"""Last-layer attention: phrase-to-token in the textual encoder and region-to-tag in the visual
encoder (paper Figure 4, left), with the probabilities the attention layer itself returns."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, FormatError
from ..data.builders import collator, image_source, phrase_lookup
from ..data.pretrain import data_captions
from ..text.tokenizer import WordPieces
from .common import draw_box, new_figure, region_colors, save_png, show_image


def attention_probs(self_attention, x, key_mask, average: bool = True):
    """Attention probabilities of a ``SelfAttention`` module on input ``x`` (B, L, H), as the
    module computes them (``return_probs``): (B, L, L) averaged over heads, or (B, heads, L, L)
    with ``average=False``; keys that ``key_mask`` (B, L) hides get 0."""
    _, probs = self_attention(x, key_mask.bool(), return_probs=True)
    probs = probs.float()
    return probs.mean(1) if average else probs


def last_layer_inputs(encoder, run):
    """Call ``run()`` (which must run ``encoder``) and return (its result, the input and the
    key mask that reached the encoder's last layer)."""
    captured = {}

    def hook(module, args):
        captured["x"], captured["mask"] = args[0], args[1]

    handle = encoder.layer[-1].register_forward_pre_hook(hook)
    try:
        result = run()
    finally:
        handle.remove()
    if "x" not in captured:
        raise RuntimeError("the encoder's last layer did not run")
    return result, captured["x"], captured["mask"]
def last_layer_attention(model, batch: dict) -> dict:
    """Head-averaged last-layer attention of the textual and visual encoders on a collated
    batch: {"text": (B, N + M, N + M), "visual": (B, 1 + K + R, 1 + K + R), "num_words": N,
    "num_tags": K, "text_mask", "visual_mask"}."""
    if model.merged:
        raise ConfigError("the attention figure shows the textual and visual encoders, which the merged-attention "
                          "model (model.merged_attention) does not have")
    with torch.no_grad():
        text, tx, tmask = last_layer_inputs(model.text_encoder, lambda: model.encode_text(
            batch["input_ids"], batch["word_mask"], batch["phrase_ids"], batch["phrase_mask"]))
        image, vx, vmask = last_layer_inputs(model.visual_encoder, lambda: model.encode_image(
            batch["tag_pieces"], batch["tag_mask"], batch["region_feats"], batch["region_mask"]))
        return {
            "text": attention_probs(model.text_encoder.layer[-1].attention.self, tx, tmask),
            "visual": attention_probs(model.visual_encoder.layer[-1].attention.self, vx, vmask),
            "num_words": text.num_words, "num_tags": image.num_tags,
            "text_mask": text.mask, "visual_mask": image.mask,
        }
def _caption(cfg, image_id: str, sentence_index: int):
    records = sorted((r for r in data_captions(cfg.data) if r.image_id == image_id),
                     key=lambda r: r.sent_id)
    if not records:
        raise FormatError(f"{cfg.data.captions}: no captions for image {image_id!r}", "image not found")
    if not 0 <= sentence_index < len(records):
        raise ConfigError(f"image {image_id!r} has {len(records)} captions; no sentence {sentence_index}")
    return records[sentence_index]
def _heatmap(ax, values: np.ndarray, rows: list[str], cols: list[str], title: str,
             vmax: float | None = None) -> None:
    """Cells coloured up to ``vmax`` (default: the largest value; larger ones saturate) and,
    when there are few, printed with enough decimals to tell them apart."""
    vmax = max(float(values.max() if vmax is None else vmax), 1e-6)
    im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=10)
    if values.size <= 300:
        digits = 2 if vmax >= 0.1 else 3
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.{digits}f}".removeprefix("0"), ha="center", va="center", fontsize=6,
                    color="black" if v > 0.6 * vmax else "white")
    extend = "max" if values.max() > vmax else "neither"
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02, extend=extend).ax.tick_params(labelsize=7)
def plot_attention(bundle, cfg, image_id: str, sentence_index: int, out_png) -> Path:
    """Last-layer attention for caption ``sentence_index`` of the image (captions.json order,
    which Flickr30k Entities follows): phrase concepts -> word pieces in the textual encoder,
    regions -> tags in the visual encoder, next to the image with its numbered regions.
    Cells are probabilities of the whole attention row, averaged over heads."""
    record = _caption(cfg, image_id, sentence_index)
    source = image_source(cfg)
    image = source(image_id)
    input_ids = WordPieces(bundle.tokenizer, cfg.data.max_tokens).captions([record.caption])[0]
    phrases = phrase_lookup(cfg, bundle.phrase_vocab, record.split)(image_id, record.caption)
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = collator(cfg, bundle)([{"input_ids": input_ids, "phrases": phrases, **image}])
            att = last_layer_attention(model, {k: v.to(cfg.device) for k, v in batch.items()})
    finally:
        model.train(was_training)
    n, k = att["num_words"], att["num_tags"]
    n_regions = len(image["boxes"])
    tokens = bundle.tokenizer.convert_ids_to_tokens(input_ids)
    phrase_names = [bundle.phrase_vocab.phrase(p) for p in phrases]
    classes = list(source.store.detections(image_id)["classes"])[:n_regions]
    text = att["text"][0].cpu().numpy()
    visual = att["visual"][0].cpu().numpy()

    fig = new_figure(16, 5.6)
    ax_img, ax_text, ax_vis = fig.subplots(1, 3, gridspec_kw={"width_ratios": [0.8, 1.25, 1.0]})
    show_image(ax_img, cfg, image_id, float(image["width"]), float(image["height"]))
    for i, (box, color) in enumerate(zip(image["boxes"], region_colors(n_regions))):
        draw_box(ax_img, box, color, lw=1.5)
        ax_img.text(box[0] + 0.5, box[1] + 0.5, f"r{i}", color="white", fontsize=7, va="top",
                    bbox={"boxstyle": "round,pad=0.1", "fc": color, "ec": "none", "alpha": 0.85}, clip_on=True)
    ax_img.set_title("\n".join(textwrap.wrap(record.caption, 40)), fontsize=9)
    fig.text(0.5, -0.02, "cells: attention probabilities, mean over heads; each row also attends to keys not shown "
             "(the phrases; [CLS] and the regions)", ha="center", fontsize=8, color="0.35")
    if phrases:
        values = text[n : n + len(phrases), : len(tokens)]
        special = set(bundle.tokenizer.all_special_ids)
        content = [j for j, t in enumerate(input_ids) if t not in special]
        # [CLS] and [SEP] draw much of the attention: scale the colours to the words
        _heatmap(ax_text, values, phrase_names, tokens, "text encoder, last layer: phrase \u2192 word piece",
                 vmax=float(values[:, content].max()) if content else None)
    else:
        ax_text.axis("off")
        ax_text.text(0.5, 0.5, "no known phrase concepts in this caption", ha="center", va="center")
    tags = image["tags"] if cfg.objectives.use_tags else []
    if tags and n_regions:
        rows = [f"r{i} {c}" for i, c in enumerate(classes)]
        _heatmap(ax_vis, visual[1 + k : 1 + k + n_regions, 1 : 1 + len(tags)], rows, list(tags),
                 "visual encoder, last layer: region \u2192 tag")
    else:
        ax_vis.axis("off")
        ax_vis.text(0.5, 0.5, "no tags or regions", ha="center", va="center")
    fig.tight_layout()
    return save_png(fig, out_png)
