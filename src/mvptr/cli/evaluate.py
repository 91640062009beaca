"""``mvptr evaluate``: zero-shot retrieval and grounding of a model directory, one task, or the
demo world's compositional probes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..checkpoint.model_dir import load_model_dir
from ..core.errors import ConfigError, FormatError, SkippedSamples
from ..core.fileio import check_apart, write_json
from ..demo.probe_set import build_probe_set
from ..eval.probes import probes_table
from ..tasks import TASKS, load_task_model, task_named
from ..train.trainer import check_writable
from ..workflows import evaluate as zero_shot
from ..workflows.finetune import evaluate_task
from ..workflows.probes import evaluate_probes
from .common import SKIP_HELP, add_config_args, is_main, locked, report_skipped, run_config, trained


def _task_args(args):
    """``evaluate``'s optional task comes before the overrides: a key=value there is an override."""
    if args.task and "=" in args.task:
        args.overrides, args.task = [args.task, *args.overrides], None
    return args


def cmd_evaluate(args) -> None:
    if _task_args(args).task:
        return cmd_evaluate_task(args)
    cfg = run_config(args)
    out = _eval_out(args)
    bundle, cfg = trained(args, cfg, args.model, load_model_dir)
    skipped = SkippedSamples() if cfg.data.skip_bad else None
    result = zero_shot.evaluate(cfg, bundle, skipped=skipped)
    if not is_main():
        return
    if zero_shot.untrained_itm(bundle):
        print(f"mvptr evaluate: {args.model}: {zero_shot.untrained_itm(bundle)}", file=sys.stderr)
    with locked(out):
        write_json(out / "eval.json", result)
    print(json.dumps(result, indent=2))
    report_skipped(skipped, out / "skipped.json")


def _eval_out(args) -> Path:
    """Where an evaluation writes (--out, else beside the model), checked before any work."""
    out = Path(args.out) if args.out else Path(args.model).parent
    check_apart({"the results": out / "eval.json"}, {"--model": args.model})
    if is_main():
        check_writable(out, 2**20)
    return out


def cmd_evaluate_probes(args) -> None:
    """The demo world's compositional probes (``mvptr.demo.probes``) of a model: probes.json."""
    cfg = run_config(args)
    out = _eval_out(args)
    bundle, cfg = trained(args, cfg, args.model, load_task_model)
    result = evaluate_probes(cfg, bundle, build_probe_set(cfg, progress=is_main()))
    if not is_main():
        return
    with locked(out):
        write_json(out / "probes.json", result)
    print(probes_table({k: v for k, v in result.items() if k in ("itm", "cosine")}))
    print(f"probes: {result['counts']}; {result['tie_rule']}; written to {out / 'probes.json'}")


def cmd_evaluate_task(args) -> None:
    if args.task == "probes":
        return cmd_evaluate_probes(args)
    if args.task not in TASKS:
        raise ConfigError(f"unknown task {args.task!r} (evaluate one of {', '.join(TASKS)} or probes, "
                          "or none: zero-shot)")
    task = task_named(args.task)
    cfg = run_config(args)
    out = _eval_out(args)
    bundle, cfg = trained(args, cfg, args.model, load_task_model)
    if task.needs_head and not hasattr(bundle.model, "task_head"):
        raise FormatError(f"{args.model}: no {args.task} task head; fine-tune the model first "
                          f"(mvptr finetune {args.task} --model {args.model})", "model directory")
    skipped = SkippedSamples() if cfg.data.skip_bad else None
    metrics = evaluate_task(cfg, args.task, bundle, out, skipped=skipped)
    if not is_main():
        return
    with locked(out):
        write_json(out / f"eval_{args.task}.json", metrics)
    print(json.dumps(metrics, indent=2))
    report_skipped(skipped, out / "skipped.json")


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="zero-shot retrieval and grounding of a model directory, one task, "
                        "or the demo world's compositional probes")
    ev.add_argument("task", nargs="?", help=f"{', '.join(TASKS)}, or probes (the demo world's compositional probes: "
                    "probes.json); default: zero-shot")
    ev.add_argument("--model", required=True)
    ev.add_argument("--out", help="directory for the results (default: the model directory's parent)")
    ev.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    add_config_args(ev)
    ev.set_defaults(func=cmd_evaluate)
