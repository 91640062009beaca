"""``mvptr pretrain`` and ``mvptr finetune``."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint.model_dir import load_model_dir
from ..core.config import save_config
from ..core.errors import ConfigError, SkippedSamples
from ..core.fileio import check_apart, write_json
from ..tasks import TASKS, load_task_model
from ..workflows.finetune import evaluate_task, finetune, log_evaluation
from ..workflows.pretrain import STAGES, check_stages, initial_bundle, pretrain_stages
from .common import (
    SKIP_HELP,
    add_config_args,
    is_main,
    locked,
    merge_skipped,
    report_skipped,
    run_config,
    skipped_steps_note,
    trained,
)


def cmd_pretrain(args) -> None:
    cfg = run_config(args)
    out = Path(cfg.out_dir)
    with locked(out):
        _pretrain(args, cfg, out)


def _pretrain(args, cfg, out: Path) -> None:
    if args.init_model and args.stage != "stage2":
        raise ConfigError("--init-model starts stage 2 from a model directory: give --stage stage2 with it")
    merged = cfg.model.merged_attention
    stages = STAGES if args.stage == "both" else (args.stage,)
    check_apart({f"{name}'s output": out / name for name in stages}, {"--init-model": args.init_model})
    check_stages(cfg, stages, merged)  # a stage's objectives that cannot run fail now, not after the first stage
    if args.stage == "stage2":
        bundle, cfg = trained(args, cfg, args.init_model or out / "stage1" / "model", load_model_dir)
        if bundle.model.merged != merged:
            raise ConfigError(f"{args.init_model or out / 'stage1' / 'model'}: its model has merged_attention="
                              f"{bundle.model.merged}, the config model.merged_attention={merged}")
    else:
        bundle = initial_bundle(cfg)
    # a resumed run's settings are recorded once the checkpoint has accepted them
    record_after = args.resume and (out / "config.yaml").exists()
    if is_main() and not record_after:
        save_config(cfg, out / "config.yaml")

    def done(name: str, result, skipped) -> None:
        if is_main():
            print(f"{name}: {result.steps} steps, {result.samples_per_second:.1f} samples/s, last losses {result.last}"
                  f"{skipped_steps_note(result)}")
            report_skipped(skipped, out / name / "skipped.json")

    pretrain_stages(cfg, bundle, out, stages, resume=args.resume, after=done, overwrite=args.overwrite)
    if is_main() and record_after:
        save_config(cfg, out / "config.yaml")


def cmd_finetune(args) -> None:
    cfg = run_config(args)
    out = Path(args.out or Path(cfg.out_dir) / "finetune" / args.task)
    check_apart({"the output directory": out}, {"--model": args.model})
    with locked(out):
        _finetune(args, cfg, out)


def _finetune(args, cfg, out: Path) -> None:
    bundle, cfg = trained(args, cfg, args.model, load_task_model)
    if is_main():
        save_config(cfg, out / "config.yaml")
    result = finetune(cfg, args.task, bundle, out, overwrite=args.overwrite)
    evaluated = SkippedSamples() if cfg.data.skip_bad else None
    metrics = evaluate_task(cfg, args.task, bundle, out, skipped=evaluated)
    if not is_main():
        return
    print(f"{args.task}: {result.train.steps} steps on {result.examples} examples, "
          f"{result.train.samples_per_second:.1f} samples/s, last losses {result.train.last}"
          f"{skipped_steps_note(result.train)}")
    write_json(out / f"eval_{args.task}.json", metrics)
    log_evaluation(cfg, args.task, out, metrics, result, bundle)
    print(json.dumps(metrics, indent=2))
    print(f"model: {result.model_dir}")
    report_skipped(merge_skipped(result.skipped, evaluated), out / "skipped.json")


def add_parsers(sub) -> None:
    pre = sub.add_parser("pretrain", help="pre-train stage 1, stage 2 or both")
    pre.add_argument("--stage", choices=["stage1", "stage2", "both"], default="both")
    again = pre.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    again.add_argument("--overwrite", action="store_true", help="replace a run already in out_dir (its log and "
                                                                "checkpoint are removed first)")
    pre.add_argument("--init-model", help="model directory to start stage 2 from")
    pre.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    add_config_args(pre)
    pre.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune a model directory on a task, then evaluate it")
    ft.add_argument("task", choices=list(TASKS))
    ft.add_argument("--model", required=True, help="pre-trained (or fine-tuned) model directory")
    ft.add_argument("--out", help="output directory (default: <out_dir>/finetune/<task>)")
    ft.add_argument("--overwrite", action="store_true", help="replace a fine-tuning run already in the output "
                                                             "directory")
    ft.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    add_config_args(ft)
    ft.set_defaults(func=cmd_finetune)
