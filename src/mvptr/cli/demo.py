"""``mvptr demo`` and ``mvptr ablate``: the demo world end to end, and Table 4 on it."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from ..demo.ablate import ROWS, run_ablation, select_rows
from ..demo.run import run_demo
from .common import add_config_args, locked, run_config


def cmd_demo(args) -> None:
    cfg = run_config(args)
    with locked(Path(cfg.out_dir)):
        report = run_demo(cfg, resume=not args.fresh)
    print((Path(cfg.out_dir) / "report.md").read_text())
    print(f"report: {Path(cfg.out_dir) / 'report.json'} ({report['seconds']['total']} s)")


def cmd_ablate(args) -> None:
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: every row needs at least one training seed (three for an "
                          "interval that can decide)")
    # one evaluation subset for every row: merged attention scores every pair with ITM
    overrides = list(args.overrides)
    if not any(o.startswith("eval.max_images=") for o in overrides):
        overrides.append(f"eval.max_images={args.eval_images}")
    args.overrides = overrides
    cfg = run_config(args)
    rows = select_rows(args.rows.split(",")) if args.rows else ROWS
    out = Path(args.out or Path(cfg.out_dir) / "ablation")
    with locked(out):
        run_ablation(args.config, overrides, out, args.seeds, rows, budget=args.budget)
    print((out / "ablation.md").read_text())


def add_parsers(sub) -> None:
    demo = sub.add_parser("demo", help="prepare, pre-train and evaluate on the demo world")
    demo.add_argument("--fresh", action="store_true", help="ignore checkpoints of an earlier demo run")
    add_config_args(demo)
    demo.set_defaults(func=cmd_demo)

    ab = sub.add_parser("ablate", help="the paper's Table 4 on the demo world: every row pre-trained, "
                                       "evaluated and fine-tuned")
    ab.add_argument("--rows", help="comma-separated rows (default: all; the full model always runs; finished rows "
                                   "are reused, so a table can be run in parts): "
                                   "full, no_mcr_v, no_tags, no_wpg_mcr_s, no_phrases, merged_attention")
    ab.add_argument("--seeds", type=int, default=3,
                    help="training seeds of every row (a difference counts where its 95%% interval excludes zero)")
    ab.add_argument("--eval-images", type=int, default=100,
                    help="test images every row is evaluated on (eval.max_images; merged attention scores every "
                         "pair with ITM)")
    ab.add_argument("--budget", type=float, default=1.0,
                    help="share of the preset's pre-training and fine-tuning steps each row trains for (default "
                         "1: the whole budget, where the demo's ITM learns)")
    ab.add_argument("--out", help="output directory (default: <out_dir>/ablation)")
    add_config_args(ab)
    ab.set_defaults(func=cmd_ablate)
