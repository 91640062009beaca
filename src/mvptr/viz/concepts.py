"""The concept space: a t-SNE map of the tag-class and phrase embedding rows (paper Figure 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.extras import needs
from .common import new_figure, region_colors, save_png


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
    with needs("viz"):
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
        raise ConfigError(f"t-SNE needs at least 3 rows, the model has {len(tag_rows)} tags "
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
    palette = dict(zip(shown, region_colors(len(shown))))

    fig = new_figure(10.5, 8.5)
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
    return save_png(fig, out_png)
