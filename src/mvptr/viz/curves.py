"""Training curves: one panel per loss over the global step, stage 2 continuing where stage 1 stopped."""

from __future__ import annotations

import math
from pathlib import Path

from ..core.errors import FormatError
from ..core.extras import needs
from ..core.fileio import read_json_lines
from ..train.objectives import OBJECTIVES
from .common import new_figure, save_png

COLUMNS = 4  # panels per row
STAGE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b")
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
                raise FormatError(f"{path} line {n}: expected a JSON object with a \"step\", got {str(row)[:80]!r}")
            stages.setdefault(str(row.get("stage", path.parent.name)), {})[int(row["step"])] = row
    rows, offset = [], 0
    for stage, by_step in stages.items():
        for step in sorted(by_step):
            rows.append({**by_step[step], "stage": stage, "global_step": offset + step})
        offset += max(by_step)
    return rows
def panels() -> dict[str, str]:
    """key -> title of each panel: every objective of the table (``train.objectives.OBJECTIVES``),
    the total loss and the learning rate."""
    return {**{name: o.title or name for name, o in OBJECTIVES.items()}, "loss": "total", "lr": "learning rate"}


def plot_training_curves(metrics_files, out_png) -> Path:
    """One panel per objective's loss (MCR^v, MCR^s, VSC, MLM, ITM, WPG and any registered one),
    the total and the learning rate, over the global step; stages are shaded and told apart by colour."""
    files = [metrics_files] if isinstance(metrics_files, (str, Path)) else list(metrics_files)
    rows = read_metrics(files)
    if not rows:
        raise FormatError(f"no metrics rows in {', '.join(map(str, files))}")
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    spans = {}
    start = 0
    for s in stages:
        end = max(r["global_step"] for r in rows if r["stage"] == s)
        spans[s] = (start, end)
        start = end
    lrs = [r["lr"] for r in rows if isinstance(r.get("lr"), (int, float)) and r["lr"] > 0]
    lr_exp = math.floor(math.log10(max(lrs))) if lrs else 0
    titles = panels()
    rows_of_panels = math.ceil(len(titles) / COLUMNS)
    fig = new_figure(15, 3.2 * rows_of_panels)
    axes = fig.subplots(rows_of_panels, COLUMNS, squeeze=False).ravel()
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    for ax, key in zip(axes, titles):
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
        title = titles[key] + (f" (\u00d71e{lr_exp})" if key == "lr" and lr_exp else "")
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
    for ax in axes[len(titles) - COLUMNS : len(titles)]:
        ax.set_xlabel("global step", fontsize=9)
    with needs("viz"):
        from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STAGE_COLORS[i % len(STAGE_COLORS)], lw=2) for i in range(len(stages))]
    labels = [f"{s} (steps {spans[s][0]}-{spans[s][1]})" for s in stages]
    fig.legend(handles, labels, loc="upper center", ncol=len(stages), frameon=False, fontsize=10,
               bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Pre-training losses", y=1.04, fontsize=12)
    fig.tight_layout()
    return save_png(fig, out_png)
