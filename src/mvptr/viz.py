"""Figures: training curves, phrase grounding, last-layer attention and the concept space.

Every plot function renders with matplotlib's Agg canvas (no GUI, no global pyplot state),
writes one PNG and returns its path:

* ``plot_training_curves``: one panel per loss over the global step, stage 2 continuing
  where stage 1 stopped;
* ``plot_grounding``: the region each Flickr30k Entities mention of a sentence is grounded
  to (the computation of ``eval.grounding``), next to the true box (paper Figure 5);
* ``plot_attention``: phrase-to-token attention in the textual encoder's last layer and
  region-to-tag attention in the visual encoder's last layer (paper Figure 4, left);
* ``plot_concepts``: a t-SNE map of the tag-class and phrase embedding rows (paper Figure 6).

``make_demo_figures`` writes all four for the demo, and ``add_visualize_parser`` registers
``mvptr visualize {curves,grounding,attention,concepts}``.

matplotlib, torch and the model code are imported inside the functions, so that building
the command-line parser stays cheap.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.fileio import read_json_lines

LOSSES = ("mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg", "loss")
TITLES = {
    "mcr_v": "MCR$^v$ (masked tags)",
    "mcr_s": "MCR$^s$ (masked phrases)",
    "vsc": "VSC (contrastive)",
    "mlm": "MLM (masked words)",
    "itm": "ITM (matching)",
    "wpg": "WPG (weak grounding)",
    "loss": "total",
    "lr": "learning rate",
}
STAGE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b")
FIGURES = ("curves", "grounding", "attention", "concepts")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _save(fig, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


# --------------------------------------------------------------------------- training curves

def read_metrics(metrics_files) -> list[dict]:
    """Rows of ``metrics.jsonl`` files with a ``global_step``: stages are laid end to end in
    the order they first appear (pass the files in training order), each stage as long as
    its last logged step. A step logged twice (a resumed run) keeps its last row, and a cut
    off last line (a file still being written) is skipped."""
    stages: dict[str, dict[int, dict]] = {}
    for path in metrics_files:
        path = Path(path)
        for n, row in read_json_lines(path):
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError(f"{path} line {n}: expected a JSON object with a \"step\", got {str(row)[:80]!r}")
            stages.setdefault(str(row.get("stage", path.parent.name)), {})[int(row["step"])] = row
    rows, offset = [], 0
    for stage, by_step in stages.items():
        for step in sorted(by_step):
            rows.append({**by_step[step], "stage": stage, "global_step": offset + step})
        offset += max(by_step)
    return rows


def plot_training_curves(metrics_files, out_png) -> Path:
    """One panel per loss (MCR^v, MCR^s, VSC, MLM, ITM, WPG, total) and the learning rate,
    over the global step; stages are shaded and told apart by colour."""
    files = [metrics_files] if isinstance(metrics_files, (str, Path)) else list(metrics_files)
    rows = read_metrics(files)
    if not rows:
        raise ValueError(f"no metrics rows in {', '.join(map(str, files))}")
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    spans = {}
    start = 0
    for s in stages:
        end = max(r["global_step"] for r in rows if r["stage"] == s)
        spans[s] = (start, end)
        start = end
    lrs = [r["lr"] for r in rows if isinstance(r.get("lr"), (int, float)) and r["lr"] > 0]
    lr_exp = math.floor(math.log10(max(lrs))) if lrs else 0
    fig = _figure(15, 6.4)
    axes = fig.subplots(2, 4).ravel()
    for ax, key in zip(axes, LOSSES + ("lr",)):
        scale = 10.0 ** -lr_exp if key == "lr" else 1.0
        drawn = False
        for i, s in enumerate(stages):
            pts = [(r["global_step"], r[key] * scale) for r in rows if r["stage"] == s and r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, color=STAGE_COLORS[i % len(STAGE_COLORS)], lw=1.4, marker="." if len(x) < 30 else None)
                drawn = True
        for i, s in enumerate(stages):
            lo, hi = spans[s]
            ax.axvspan(lo, hi, color=STAGE_COLORS[i % len(STAGE_COLORS)], alpha=0.06, lw=0)
            if i:
                ax.axvline(lo, color="0.4", ls="--", lw=0.8)
        title = TITLES[key] + (f" (\u00d71e{lr_exp})" if key == "lr" and lr_exp else "")
        ax.set_title(title, fontsize=10)
        if key == "itm" and drawn:  # a binary classifier that has learnt nothing sits at ln 2
            ax.axhline(math.log(2), color="0.3", ls=":", lw=1.0)
            ax.annotate("chance (ln 2)", (0.0, math.log(2)), xycoords=("axes fraction", "data"), xytext=(3, 2),
                        textcoords="offset points", ha="left", va="bottom", fontsize=7, color="0.3")
        ax.set_xlim(0, max(hi for _, hi in spans.values()) or 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="0.5")
    for ax in axes[4:]:
        ax.set_xlabel("global step", fontsize=9)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STAGE_COLORS[i % len(STAGE_COLORS)], lw=2) for i in range(len(stages))]
    labels = [f"{s} (steps {spans[s][0]}-{spans[s][1]})" for s in stages]
    fig.legend(handles, labels, loc="upper center", ncol=len(stages), frameon=False, fontsize=10,
               bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Pre-training losses", y=1.04, fontsize=12)
    fig.tight_layout()
    return _save(fig, out_png)


# --------------------------------------------------------------------------- shared inputs

def _split_of(cfg, image_id: str) -> str:
    from .data.pretrain import data_captions

    for r in data_captions(cfg.data):
        if r.image_id == image_id:
            return r.split
    raise ValueError(f"{cfg.data.captions}: no captions for image {image_id!r}")


def _image_dir(cfg) -> Path:
    return Path(cfg.data.captions).parent / "images"


def _show_image(ax, cfg, image_id: str, width: float, height: float) -> None:
    from PIL import Image

    path = _image_dir(cfg) / f"{image_id}.png"
    if path.exists():
        with Image.open(path) as im:
            ax.imshow(np.asarray(im.convert("RGB")), extent=(0, width, height, 0), interpolation="nearest")
    else:
        ax.set_facecolor("0.9")
        ax.text(width / 2, height / 2, f"{path.name}\nnot found", ha="center", va="center", color="0.4")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box, color, dashed: bool = False, lw: float = 2.2):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw,
                           ls=(0, (4, 3)) if dashed else "-"))


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# --------------------------------------------------------------------------- grounding

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
    from .eval.grounding import grounding_examples
    from .pipeline import phrase_lookup

    lookup = phrase_lookup(cfg, bundle.phrase_vocab, _split_of(cfg, image_id))
    examples = grounding_examples(cfg.eval.entities_dir, [image_id], bundle.tokenizer, cfg.data.max_tokens, lookup)
    for ex in examples:
        if sentence_index is None or ex["sentence_index"] == sentence_index:
            return ex
    which = "any sentence" if sentence_index is None else f"sentence {sentence_index}"
    raise ValueError(f"{cfg.eval.entities_dir}: no boxed mentions in {which} of image {image_id!r}")


def ground_sentence(bundle, cfg, image_id: str, sentence_index: int | None = None) -> SentenceGrounding:
    """Ground the Flickr30k Entities mentions of one sentence (None: the image's first
    sentence with boxed mentions) exactly as ``evaluate_grounding`` does."""
    import torch

    from .eval.grounding import choose_regions
    from .pipeline import collator, image_source

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
    from .vision.regions import box_iou, ground_truth_box

    g = ground_sentence(bundle, cfg, image_id, sentence_index)
    colors = _colors(len(g.labels))
    fig = _figure(9.6, 5.2)
    ax, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 0.85]})
    _show_image(ax, cfg, image_id, g.width, g.height)
    legend = []
    shared: dict[int, int] = {}  # region -> mentions already drawn on it
    inset = 0.012 * max(g.width, g.height)
    for i, (label, r, gt) in enumerate(zip(g.labels, g.regions, g.gt_boxes)):
        merged = ground_truth_box(gt, "merged")[0]
        _box(ax, merged, colors[i], dashed=True, lw=1.6)
        if r < 0:
            legend.append((colors[i], f"{label}\n  no regions detected"))
            continue
        k = shared.get(r, 0)
        shared[r] = k + 1
        det = g.det_boxes[r]
        # several mentions on one region: nested boxes and stacked labels
        _box(ax, det + np.array([1, 1, -1, -1]) * k * inset, colors[i])
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
    return _save(fig, out_png), list(g.regions)


def _legend_swatch(ax, y: float, color):
    from matplotlib.patches import Rectangle

    return Rectangle((0.0, y - 0.035), 0.05, 0.035, transform=ax.transAxes, fc=color, ec="none")


# --------------------------------------------------------------------------- attention

def attention_probs(self_attention, x, key_mask, average: bool = True):
    """Attention probabilities of a ``SelfAttention`` module on input ``x`` (B, L, H):
    softmax(Q K^T / sqrt(d)) over the keys that ``key_mask`` (B, L) allows, (B, L, L)
    averaged over heads, or (B, heads, L, L) with ``average=False``."""
    import torch

    q = self_attention._heads(self_attention.query(x)).float()
    k = self_attention._heads(self_attention.key(x)).float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
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
    import torch

    from .core.errors import ConfigError

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
    from .data.pretrain import data_captions

    records = sorted((r for r in data_captions(cfg.data) if r.image_id == image_id),
                     key=lambda r: r.sent_id)
    if not records:
        raise ValueError(f"{cfg.data.captions}: no captions for image {image_id!r}")
    if not 0 <= sentence_index < len(records):
        raise ValueError(f"image {image_id!r} has {len(records)} captions; no sentence {sentence_index}")
    return records[sentence_index]


def _heatmap(fig, ax, values: np.ndarray, rows: list[str], cols: list[str], title: str,
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
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, extend=extend).ax.tick_params(labelsize=7)


def plot_attention(bundle, cfg, image_id: str, sentence_index: int, out_png) -> Path:
    """Last-layer attention for caption ``sentence_index`` of the image (captions.json order,
    which Flickr30k Entities follows): phrase concepts -> word pieces in the textual encoder,
    regions -> tags in the visual encoder, next to the image with its numbered regions.
    Cells are probabilities of the whole attention row, averaged over heads."""
    import torch

    from .pipeline import collator, image_source, phrase_lookup
    from .text.tokenizer import WordPieces

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

    fig = _figure(16, 5.6)
    ax_img, ax_text, ax_vis = fig.subplots(1, 3, gridspec_kw={"width_ratios": [0.8, 1.25, 1.0]})
    _show_image(ax_img, cfg, image_id, float(image["width"]), float(image["height"]))
    for i, (box, color) in enumerate(zip(image["boxes"], _colors(n_regions))):
        _box(ax_img, box, color, lw=1.5)
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
        _heatmap(fig, ax_text, values, phrase_names, tokens, "text encoder, last layer: phrase \u2192 word piece",
                 vmax=float(values[:, content].max()) if content else None)
    else:
        ax_text.axis("off")
        ax_text.text(0.5, 0.5, "no known phrase concepts in this caption", ha="center", va="center")
    tags = image["tags"] if cfg.objectives.use_tags else []
    if tags and n_regions:
        rows = [f"r{i} {c}" for i, c in enumerate(classes)]
        _heatmap(fig, ax_vis, visual[1 + k : 1 + k + n_regions, 1 : 1 + len(tags)], rows, list(tags),
                 "visual encoder, last layer: region \u2192 tag")
    else:
        ax_vis.axis("off")
        ax_vis.text(0.5, 0.5, "no tags or regions", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, out_png)


# --------------------------------------------------------------------------- concepts

def _tag_of(words: list[str], tag_words: dict[str, str]) -> str | None:
    """The first tag (in the phrase's word order) whose words all occur in the phrase."""
    present = set(words)
    for w in words:
        for tag in tag_words.get(w, ()):
            if set(tag.split()) <= present:
                return tag
    return None


def plot_concepts(bundle, out_png, max_points: int = 400, seed: int = 0) -> Path:
    """t-SNE of the tag-class rows (triangles, labelled) and the ``max_points`` most frequent
    phrase rows (dots, coloured by the tag word they contain) of the shared table."""
    import torch
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    model = bundle.model
    with torch.no_grad():
        # in word-piece tag mode the MCR^v candidates are the whole vocabulary; show the classes
        tag_rows = model.tag_class_rows() if model.cfg.tag_mode == "concepts" else model.piece_mean(model.tag_pieces)
        tag_rows = tag_rows[:max_points].detach().float().cpu()
        phrase_rows = model.phrase_rows[:max_points].detach().float().cpu()
    tag_names = [bundle.tag_vocab[i] if i < len(bundle.tag_vocab) else f"tag {i}" for i in range(len(tag_rows))]
    phrases = [bundle.phrase_vocab.phrase(i) for i in range(len(phrase_rows))]
    rows = torch.nn.functional.normalize(torch.cat([tag_rows, phrase_rows]), dim=-1).numpy()
    if len(rows) < 3:
        raise ValueError(f"t-SNE needs at least 3 rows, the model has {len(tag_rows)} tags "
                         f"and {len(phrase_rows)} phrases")
    perplexity = float(min(30.0, max(1.0, (len(rows) - 1) / 3)))
    # one thread: t-SNE's OpenMP loops crawl when the cores are busy, and the map stays reproducible
    with threadpool_limits(1):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(rows)
    txy, pxy = xy[: len(tag_rows)], xy[len(tag_rows) :]

    tag_words: dict[str, list[str]] = {}
    for t in tag_names:
        for w in t.split():
            tag_words.setdefault(w, []).append(t)
    of = [_tag_of(p.split(), tag_words) for p in phrases]
    counts = {t: sum(o == t for o in of) for t in tag_names}
    shown = [t for t in sorted(tag_names, key=lambda t: -counts[t]) if counts[t]][:19]
    shown += [t for t in tag_names if t not in shown][: max(0, 20 - len(shown))]
    palette = dict(zip(shown, _colors(len(shown))))

    fig = _figure(10.5, 8.5)
    ax = fig.subplots()
    none = [i for i, o in enumerate(of) if o is None]
    if none:
        ax.scatter(pxy[none, 0], pxy[none, 1], s=10, c="0.7", label=f"phrase without a tag word ({len(none)})")
    other = [i for i, o in enumerate(of) if o is not None and o not in palette]
    if other:
        ax.scatter(pxy[other, 0], pxy[other, 1], s=10, c="0.45", label=f"phrase with another tag ({len(other)})")
    for t, color in palette.items():
        idx = [i for i, o in enumerate(of) if o == t]
        if idx:
            ax.scatter(pxy[idx, 0], pxy[idx, 1], s=12, color=color, alpha=0.8, label=f"phrase with '{t}' ({len(idx)})")
    for i, (t, (x, y)) in enumerate(zip(tag_names, txy)):
        color = palette.get(t, "0.2")
        ax.scatter([x], [y], marker="^", s=150, color=color, edgecolors="black", linewidths=1.0, zorder=3)
        if i < 60:
            ax.annotate(t, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=10, weight="bold", zorder=4,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": color, "alpha": 0.8})
    # name some of the most frequent phrases, none too close to a name already shown
    span = float(np.ptp(xy, axis=0).max()) or 1.0
    named = [tuple(p) for p in txy[:60]]
    for i in range(min(40, len(phrases))):
        if len(named) - min(len(txy), 60) >= 10:
            break
        if all(np.hypot(*(pxy[i] - np.asarray(p))) > 0.08 * span for p in named):
            ax.annotate(phrases[i], pxy[i], xytext=(3, -9), textcoords="offset points", fontsize=7, color="0.2")
            named.append(tuple(pxy[i]))
    ax.scatter([], [], marker="^", s=80, color="white", edgecolors="black", label="tag class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(tag_names)} tag-class rows and {len(phrases)} phrase rows", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_png)


# --------------------------------------------------------------------------- demo and CLI

def first_grounding_sentence(bundle, cfg, split: str | None = None) -> tuple[str, int]:
    """(image id, sentence index) of the first image of ``split`` (default: the evaluation
    split) with a sentence that has boxed Flickr30k Entities mentions."""
    from .data.pretrain import data_captions
    from .eval.grounding import grounding_examples

    split = split or cfg.eval.split
    entities = Path(cfg.eval.entities_dir)
    for image_id in sorted({r.image_id for r in data_captions(cfg.data, [split])}):
        if not (entities / "Annotations" / f"{image_id}.xml").exists():
            continue
        examples = grounding_examples(entities, [image_id], bundle.tokenizer, cfg.data.max_tokens, lambda *_: [])
        if examples:
            return image_id, examples[0]["sentence_index"]
    raise ValueError(f"{entities}: no {split} image has a sentence with boxed mentions")


def stage_metrics(cfg) -> list[Path]:
    """The run's metrics files that exist, in training order."""
    files = [Path(cfg.out_dir) / s.name / "metrics.jsonl" for s in (cfg.stage1, cfg.stage2)]
    return [f for f in files if f.exists()]


def make_demo_figures(cfg, bundle, out_dir) -> dict[str, Path]:
    """curves.png (when the run has metrics), grounding.png, attention.png and concepts.png
    for the first test image with entities, in ``out_dir``."""
    out = Path(out_dir)
    figures = {}
    metrics = stage_metrics(cfg)
    if metrics:
        figures["curves"] = plot_training_curves(metrics, out / "curves.png")
    image_id, sentence = first_grounding_sentence(bundle, cfg)
    figures["grounding"] = plot_grounding(bundle, cfg, image_id, sentence, out / "grounding.png")[0]
    figures["attention"] = plot_attention(bundle, cfg, image_id, sentence, out / "attention.png")
    figures["concepts"] = plot_concepts(bundle, out / "concepts.png")
    return figures


def cmd_visualize(args) -> None:
    from .core.config import load_config
    from .pipeline import configure_torch

    cfg = load_config(args.config, args.overrides)
    configure_torch(cfg)
    what = args.figure
    out = args.out or f"{what}.png"
    if what == "curves":
        files = args.metrics or stage_metrics(cfg)
        if not files:
            raise SystemExit(f"mvptr visualize curves: no --metrics given and no metrics.jsonl under {cfg.out_dir}")
        print(plot_training_curves(files, out))
        return
    from .checkpoint.model_dir import adopt_model_settings, load_model_dir

    bundle = load_model_dir(args.model, cfg.device)
    cfg = adopt_model_settings(cfg, bundle, args.overrides, args.model)
    if what == "concepts":
        print(plot_concepts(bundle, out, max_points=args.max_points))
        return
    image_id, sentence = args.image_id, args.sentence
    if image_id is None:
        image_id, first = first_grounding_sentence(bundle, cfg)
        sentence = first if sentence is None else sentence
    if what == "grounding":
        path, regions = plot_grounding(bundle, cfg, image_id, sentence, out)
        print(f"{path} (image {image_id}, chosen regions {regions})")
    else:
        print(plot_attention(bundle, cfg, image_id, sentence or 0, out))


def add_visualize_parser(subparsers) -> None:
    """Register ``mvptr visualize {curves,grounding,attention,concepts}`` on the subparsers
    of the ``mvptr`` parser."""
    vis = subparsers.add_parser("visualize", help="figures: training curves, phrase grounding, attention, concepts",
                                description="Write one figure as a PNG.")
    figures = vis.add_subparsers(dest="figure", required=True, metavar="{" + ",".join(FIGURES) + "}")
    helps = {
        "curves": "losses of metrics.jsonl files over the global step (default: the config's out_dir)",
        "grounding": "the region each entity mention of a sentence is grounded to, with the true box",
        "attention": "last-layer phrase-to-token and region-to-tag attention for one caption",
        "concepts": "t-SNE of the tag-class and phrase embedding rows",
    }
    for name in FIGURES:
        p = figures.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("--config", default="demo", help="preset name (tiny, demo, base) or a YAML file")
        p.add_argument("--out", help=f"PNG to write (default: {name}.png)")
        if name == "curves":
            p.add_argument("--metrics", nargs="+", metavar="FILE",
                           help="metrics.jsonl files in training order (give key=value overrides before this)")
        else:
            p.add_argument("--model", required=True, help="model directory")
        if name in ("grounding", "attention"):
            p.add_argument("--image-id", help="default: the first evaluation image with entity boxes")
            p.add_argument("--sentence", type=int,
                           help="sentence index within the image (default: grounding, the first with boxed "
                                "mentions; attention, that sentence or 0 with --image-id)")
        if name == "concepts":
            p.add_argument("--max-points", type=int, default=400, help="most frequent phrases to show")
        p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.captions=FILE")
        p.set_defaults(func=cmd_visualize)
