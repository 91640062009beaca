"""``mvptr visualize curves|grounding|attention|concepts``: one figure as a PNG."""

from __future__ import annotations

from ..checkpoint.model_dir import load_model_dir
from ..core.errors import ConfigError
from ..core.fileio import check_apart
from ..core.runtime import configure_torch
from ..tasks import load_config
from ..viz.attention import plot_attention
from ..viz.common import FIGURES, stage_metrics
from ..viz.concepts import plot_concepts
from ..viz.curves import plot_training_curves
from ..viz.grounding import first_grounding_sentence, plot_grounding
from .common import trained


def cmd_visualize(args) -> None:
    cfg = load_config(args.config, args.overrides)
    configure_torch(cfg)
    what = args.figure
    out = args.out or f"{what}.png"
    if what == "curves":
        files = args.metrics or stage_metrics(cfg)
        if not files:
            raise ConfigError(f"visualize curves: no --metrics given and no metrics.jsonl under {cfg.out_dir}")
        print(plot_training_curves(files, out))
        return

    check_apart({"--out": out}, {"--model": args.model})
    bundle, cfg = trained(args, cfg, args.model, load_model_dir)
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


def add_parser(subparsers) -> None:
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
