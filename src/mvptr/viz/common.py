"""What every figure shares: a matplotlib figure without pyplot, saving it as PNG, the image with its boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.extras import needs

FIGURES = ("curves", "grounding", "attention", "concepts")
def new_figure(width: float, height: float):
    with needs("viz"):
        from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)
def save_png(fig, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out
def image_dir(cfg) -> Path:
    return Path(cfg.data.captions).parent / "images"
def show_image(ax, cfg, image_id: str, width: float, height: float) -> None:
    path = image_dir(cfg) / f"{image_id}.png"
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
def draw_box(ax, box, color, dashed: bool = False, lw: float = 2.2):
    with needs("viz"):
        from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw,
                           ls=(0, (4, 3)) if dashed else "-"))
def region_colors(n: int) -> list:
    with needs("viz"):
        from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
def stage_metrics(cfg) -> list[Path]:
    """The run's metrics files that exist, in training order."""
    files = [Path(cfg.out_dir) / s.name / "metrics.jsonl" for s in (cfg.stage1, cfg.stage2)]
    return [f for f in files if f.exists()]
