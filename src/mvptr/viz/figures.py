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

``make_demo_figures`` writes all four for the demo; ``mvptr visualize`` (``cli/visualize.py``)
writes one. matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

from pathlib import Path

from .attention import plot_attention
from .common import stage_metrics
from .concepts import plot_concepts
from .curves import plot_training_curves
from .grounding import first_grounding_sentence, plot_grounding


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
