"""``mvptr pretrain`` and ``mvptr finetune``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..checkpoint.bert_init import init_dir, new_bundle
from ..checkpoint.model_dir import load_model_dir
from ..checkpoint.task_dir import load_task_model
from ..core.config import save_config
from ..core.errors import ConfigError, SkippedSamples
from ..core.fileio import write_json
from ..data.builders import training_tag_vocab
from ..text.phrases import PhraseVocab
from ..train.recipes import pretraining_recipe
from ..workflows.finetune import evaluate_task, finetune
from ..workflows.pretrain import pretrain_stage
from .common import SKIP_HELP, add_config_args, is_main, locked, report_skipped, run_config, trained


def cmd_pretrain(args) -> None:
    cfg = run_config(args)
    out = Path(cfg.out_dir)
    with locked(out):
        _pretrain(args, cfg, out)


def _pretrain(args, cfg, out: Path) -> None:
    if args.init_model and args.stage != "stage2":
        raise ConfigError("--init-model starts stage 2 from a model directory: give --stage stage2 with it")
    merged = cfg.model.merged_attention
    stages = pretraining_stages(args.stage, merged)
    for name in stages:  # a stage's objectives that cannot run fail now, not after the first stage
        stage = getattr(cfg, name)
        pretraining_recipe(name, list(stage.objectives), cfg.objectives, merged, stage.cross_modal_lr_scale,
                           negative_warmup_steps=stage.negative_warmup_steps, loss_weights=stage.loss_weights)
    if merged and args.stage == "both" and is_main():
        print("stage1: skipped (merged attention has no uni-modal stage; its one stage uses the stage2 settings)",
              file=sys.stderr, flush=True)
    if args.stage == "stage2" and (args.init_model or not merged):
        bundle, cfg = trained(args, cfg, args.init_model or out / "stage1" / "model", load_model_dir)
        if bundle.model.merged != merged:
            raise ConfigError(f"{args.init_model}: its model has merged_attention={bundle.model.merged}, "
                              f"the config model.merged_attention={merged}")
    else:
        init_dir(cfg)  # a wrong init.source is said before any data is read
        bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    # a resumed run's settings are recorded once the checkpoint has accepted them
    record_after = args.resume and (out / "config.yaml").exists()
    if is_main() and not record_after:
        save_config(cfg, out / "config.yaml")
    for name in stages:
        skipped = SkippedSamples() if cfg.data.skip_bad else None
        result = pretrain_stage(cfg, getattr(cfg, name), bundle, out / name, resume=args.resume, skipped=skipped)
        if is_main():
            print(f"{name}: {result.steps} steps, {result.samples_per_second:.1f} samples/s, last losses {result.last}")
            report_skipped(skipped, out / name / "skipped.json")
    if is_main() and record_after:
        save_config(cfg, out / "config.yaml")


def pretraining_stages(stage: str, merged: bool) -> tuple[str, ...]:
    """The stages to run. The merged-attention model has no uni-modal stage: its one stage is
    stage 2 (its settings), started from the initialisation; asking for stage 1 is an error."""
    if not merged:
        return ("stage1", "stage2") if stage == "both" else (stage,)
    if stage == "stage1":
        raise ConfigError("model.merged_attention: the merged-attention model has no uni-modal stage 1; it is "
                          "pre-trained in one stage with the stage2 settings (--stage stage2, or both)")
    return ("stage2",)


def cmd_finetune(args) -> None:
    cfg = run_config(args)
    out = Path(args.out or Path(cfg.out_dir) / "finetune" / args.task)
    with locked(out):
        _finetune(args, cfg, out)


def _finetune(args, cfg, out: Path) -> None:
    bundle, cfg = trained(args, cfg, args.model, load_task_model)
    if is_main():
        save_config(cfg, out / "config.yaml")
    result = finetune(cfg, args.task, bundle, out)
    metrics = evaluate_task(cfg, args.task, bundle, out)
    if not is_main():
        return
    print(f"{args.task}: {result.train.steps} steps on {result.examples} examples, "
          f"{result.train.samples_per_second:.1f} samples/s, last losses {result.train.last}")
    write_json(out / f"eval_{args.task}.json", metrics)
    print(json.dumps(metrics, indent=2))
    print(f"model: {result.model_dir}")


def add_parsers(sub) -> None:
    pre = sub.add_parser("pretrain", help="pre-train stage 1, stage 2 or both")
    pre.add_argument("--stage", choices=["stage1", "stage2", "both"], default="both")
    pre.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    pre.add_argument("--init-model", help="model directory to start stage 2 from")
    pre.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    add_config_args(pre)
    pre.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune a model directory on a task, then evaluate it")
    ft.add_argument("task", choices=["retrieval", "vqa", "ve", "grounding", "easyvqa"])
    ft.add_argument("--model", required=True, help="pre-trained (or fine-tuned) model directory")
    ft.add_argument("--out", help="output directory (default: <out_dir>/finetune/<task>)")
    add_config_args(ft)
    ft.set_defaults(func=cmd_finetune)
