"""The ``mvptr`` command.

    mvptr prepare demo [--out DIR] [--n-train N] [--n-val N] [--n-test N] [--seed S]
    mvptr prepare phrases --captions FILE --out DIR [--min-count K] [--train-split S] [--n-process P] [--skip-bad]
                          [--shard I/N]       (FILE may hold {split}: ann/coco_karpathy_{split}.json)
    mvptr prepare vocab [--config PRESET] [--min-count K] [--out FILE] [--skip-bad]
    mvptr prepare tasks [--out DIR]               (the demo world's VQA / SNLI-VE / grounding files)
    mvptr prepare tags --instances FILE [FILE ...] --out FILE [--key id|stem]   (ground-truth tags for data.tags)
    mvptr prepare easyvqa [--out DIR] [--detector FILE]
    mvptr features convert --features F.tsv --predictions P.tsv --out DIR [--feat-dim D] [--skip-bad] [--shard I/N]
    mvptr features export --store DIR --out DIR
    mvptr features extract --images DIR --out DIR [--detector demo|frcnn] [--weights FILE] [--device D] [--skip-bad]
    mvptr merge-shards OUT                        (after prepare phrases / features extract|convert --shard I/N)
    mvptr pretrain [--config PRESET] [--stage stage1|stage2|both] [--resume] [--skip-bad] [key=value ...]
    mvptr evaluate --model DIR [--config PRESET] [--skip-bad] [key=value ...]
    mvptr finetune retrieval|vqa|ve|grounding|easyvqa --model DIR [--out DIR] [--config PRESET] [key=value ...]
    mvptr evaluate retrieval|vqa|ve|grounding|easyvqa --model DIR [--config PRESET] [key=value ...]
    mvptr demo [--config PRESET] [--fresh] [key=value ...]
    mvptr ablate [--config PRESET] [--rows full,no_mcr_v,...] [--seeds N] [--out DIR] [key=value ...]
    mvptr convert official SRC_DIR OUT_DIR [--trust-pickle]
    mvptr search build|query ...
    mvptr serve --index DIR [--host 127.0.0.1] [--port 8000] [--vqa-model DIR]

Every command that takes ``key=value`` overrides saves the resolved configuration with its outputs.

With ``--model`` / ``--init-model`` the model directory's own settings (its ``model`` section,
``objectives.use_tags`` and ``use_phrases``) are used; a ``model.*`` override is applied when it
leaves the weights' shapes alone (dropout, wpg_layer, activation checkpointing, compile) and
refused otherwise.

With ``--skip-bad`` (``data.skip_bad=true``) a bad sample is left out instead of stopping the
command; the skipped samples are counted by reason, printed at the end (on stderr) and saved
as ``skipped.json`` beside the command's outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

from .core.config import load_config, save_config
from .core.errors import ConfigError, FormatError, OutputDirError
from .core.fileio import output_lock


def _config(args):
    overrides = list(args.overrides) + (["data.skip_bad=true"] if getattr(args, "skip_bad", False) else [])
    cfg = load_config(args.config, overrides)
    from .core.distributed import from_env
    from .pipeline import configure_torch

    configure_torch(cfg)
    from_env(cfg.device)  # under torchrun: join the process group before touching a GPU
    return cfg


def _is_main() -> bool:
    """Whether this process writes files and prints (always, outside torchrun)."""
    from .core.distributed import active

    return active().main


def _skipped(args):
    from .core.errors import SkippedSamples

    return SkippedSamples() if args.skip_bad else None


def _report_skipped(skipped, path: Path) -> None:
    if skipped is not None:
        skipped.save(path)
        print(f"{skipped.report()}\n(details: {path})", file=sys.stderr)


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N) with 0 <= I < N; a bad value is a usage error (exit 2)."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (share I of N, counted from 0), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def cmd_prepare(args) -> None:
    if args.shard is not None and args.what != "phrases":
        raise SystemExit(f"mvptr prepare {args.what}: --shard applies to prepare phrases")
    if args.what == "demo":
        from .data.demo_world import generate_demo_world

        summary = generate_demo_world(args.out or "data/demo", n_train=args.n_train, n_val=args.n_val,
                                      n_test=args.n_test, seed=args.seed, image_size=args.image_size)
        print(json.dumps(summary, indent=2, default=str))
    elif args.what == "tasks":
        from .data.demo_tasks import prepare_demo_tasks

        print(json.dumps(prepare_demo_tasks(args.out or "data/demo"), indent=2))
    elif args.what == "tags":
        from .data.tag_files import tags_from_coco_instances, write_tag_file

        if not args.instances or not args.out:
            raise SystemExit("mvptr prepare tags: --instances and --out are required")
        tags = tags_from_coco_instances(args.instances, args.key)
        write_tag_file(args.out, tags)
        print(json.dumps({"out": args.out, "images": len(tags), "tags": sum(map(len, tags.values())),
                          "classes": len({t for v in tags.values() for t in v})}, indent=2))
    elif args.what == "easyvqa":
        from .data.easyvqa import prepare_easyvqa

        print(json.dumps(prepare_easyvqa(args.out or "data/demo/easyvqa", args.detector), indent=2))
    elif args.what == "vocab":
        # one phrase vocabulary over all corpora of data.corpora (or the single corpus)
        from .data.pretrain import mix_phrase_vocab

        cfg = load_config(args.config)
        out = Path(args.out or cfg.data.phrase_vocab)
        skipped = _skipped(args)
        vocab, captions = mix_phrase_vocab(cfg.data, args.min_count, skipped)
        out.parent.mkdir(parents=True, exist_ok=True)
        vocab.save(out)
        print(json.dumps({"out": str(out), "captions": captions, "vocab_size": len(vocab),
                          "min_count": args.min_count}, indent=2))
        _report_skipped(skipped, out.with_name("skipped.json"))
    else:
        if not args.captions or not args.out:
            raise SystemExit("mvptr prepare phrases: --captions and --out are required")
        from .text.phrases import prepare_phrases

        skipped = _skipped(args)
        out = _shard_out(args)
        with output_lock(out):  # two runs would interleave their appends to the cache
            try:
                stats = prepare_phrases(args.captions, out, min_count=args.min_count, n_process=args.n_process,
                                        skip=skipped, part=args.shard, splits=(args.train_split,))
            except FormatError as err:
                raise SystemExit(f"mvptr prepare phrases: {err}") from None
            print(json.dumps(stats, indent=2))
            _report_skipped(skipped, out / "skipped.json")
            _finish_shard(args, out, "phrases", {"captions": _abs(args.captions), "min_count": args.min_count,
                                                 "splits": [args.train_split]}, stats.get("captions"))


def _abs(path) -> str:
    return str(Path(path).resolve())


def _shard_out(args) -> Path:
    """Where the command writes: ``--out``, or its shard directory with ``--shard I/N``."""
    if args.shard is None:
        return Path(args.out)
    from .core.shards import shard_dir

    return shard_dir(args.out, args.shard)


def _finish_shard(args, out: Path, kind: str, inputs: dict, items: int) -> None:
    if args.shard is None:
        return
    from .core.shards import finish_shard

    finish_shard(out, kind, args.shard, {**inputs, "skip_bad": bool(args.skip_bad)}, items)
    print(f"shard {args.shard[0]}/{args.shard[1]} done; when all {args.shard[1]} are: "
          f"mvptr merge-shards {args.out}", file=sys.stderr)


def cmd_features(args) -> None:
    if args.shard is not None and args.what == "export":
        raise SystemExit("mvptr features export: --shard applies to extract and convert")
    if not args.out:
        raise SystemExit(f"mvptr features {args.what}: --out is required")
    # convert writes a directory that must not exist yet: its lock lies beside it
    with output_lock(_shard_out(args), sibling=args.what == "convert"):
        _features(args)


def _features(args) -> None:
    from .vision.stores import convert_memmap_to_vinvl, convert_vinvl_to_memmap

    skipped = _skipped(args)
    try:
        if args.what == "convert":
            if not args.features or not args.predictions or not args.out:
                raise SystemExit("mvptr features convert: --features, --predictions and --out are required")
            out = _shard_out(args)
            summary = convert_vinvl_to_memmap(args.features, args.predictions, out, feat_dim=args.feat_dim,
                                              skip=skipped, part=args.shard)
            inputs = {"features": _abs(args.features), "predictions": _abs(args.predictions),
                      "feat_dim": args.feat_dim}
        elif args.what == "export":
            if not args.store or not args.out:
                raise SystemExit("mvptr features export: --store and --out are required")
            out = Path(args.out)
            summary = convert_memmap_to_vinvl(args.store, out)
        else:
            if not args.images or not args.out:
                raise SystemExit("mvptr features extract: --images and --out are required")
            from .vision.detect import extract_features

            out = _shard_out(args)
            summary = extract_features(args.images, out, args.detector, args.weights,
                                       batch_size=args.batch_size, skip=skipped, device=args.device, part=args.shard)
            inputs = {"images": _abs(args.images), "detector": args.detector, "weights": _abs(summary["weights"])}
    except (FormatError, FileExistsError, FileNotFoundError, ImportError, ValueError) as err:
        raise SystemExit(f"mvptr features {args.what}: {err}") from None
    print(json.dumps(summary, indent=2))
    _report_skipped(skipped, out / "skipped.json")
    if args.what != "export":
        _finish_shard(args, out, "store" if args.what == "convert" else "features", inputs, summary["num_images"])


def cmd_merge_shards(args) -> None:
    from .workflows.merge_shards import merge_shards

    try:
        with output_lock(args.out):
            summary = merge_shards(args.out)
    except FileExistsError as err:
        raise FormatError(str(err), "output exists") from None
    print(json.dumps(summary, indent=2))


def _trained(args, cfg, path, load):
    """A trained model directory and the run's config with its settings (see
    ``checkpoint.adopt_model_settings``)."""
    from .checkpoint.model_dir import adopt_model_settings

    bundle = load(path, cfg.device)
    return bundle, adopt_model_settings(cfg, bundle, args.overrides, str(path))


def cmd_pretrain(args) -> None:
    cfg = _config(args)
    out = Path(cfg.out_dir)
    with _locked(out):
        _pretrain(args, cfg, out)


def _locked(out: Path):
    """The output directory's lock, taken by the process that writes (the first, under torchrun)."""
    return output_lock(out) if _is_main() else contextlib.nullcontext()


def _pretrain(args, cfg, out: Path) -> None:
    from .checkpoint.model_dir import load_model_dir
    from .core.errors import SkippedSamples
    from .pipeline import init_dir, new_bundle, pretrain_stage, training_tag_vocab
    from .text.phrases import PhraseVocab
    from .train.recipes import pretraining_recipe

    if args.init_model and args.stage != "stage2":
        raise ConfigError("--init-model starts stage 2 from a model directory: give --stage stage2 with it")
    merged = cfg.model.merged_attention
    stages = _pretraining_stages(args.stage, merged)
    for name in stages:  # a stage's objectives that cannot run fail now, not after the first stage
        pretraining_recipe(name, list(getattr(cfg, name).objectives), cfg.objectives, merged)
    if merged and args.stage == "both" and _is_main():
        print("stage1: skipped (merged attention has no uni-modal stage; its one stage uses the stage2 settings)",
              file=sys.stderr, flush=True)
    if args.stage == "stage2" and (args.init_model or not merged):
        bundle, cfg = _trained(args, cfg, args.init_model or out / "stage1" / "model", load_model_dir)
        if bundle.model.merged != merged:
            raise ConfigError(f"{args.init_model}: its model has merged_attention={bundle.model.merged}, "
                              f"the config model.merged_attention={merged}")
    else:
        init_dir(cfg)  # a wrong init.source is said before any data is read
        bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    # a resumed run's settings are recorded once the checkpoint has accepted them
    record_after = args.resume and (out / "config.yaml").exists()
    if _is_main() and not record_after:
        save_config(cfg, out / "config.yaml")
    for name in stages:
        skipped = SkippedSamples() if cfg.data.skip_bad else None
        result = pretrain_stage(cfg, getattr(cfg, name), bundle, out / name, resume=args.resume, skipped=skipped)
        if _is_main():
            print(f"{name}: {result.steps} steps, {result.samples_per_second:.1f} samples/s, last losses {result.last}")
            _report_skipped(skipped, out / name / "skipped.json")
    if _is_main() and record_after:
        save_config(cfg, out / "config.yaml")


def _pretraining_stages(stage: str, merged: bool) -> tuple[str, ...]:
    """The stages to run. The merged-attention model has no uni-modal stage: its one stage is
    stage 2 (its settings), started from the initialisation; asking for stage 1 is an error."""
    if not merged:
        return ("stage1", "stage2") if stage == "both" else (stage,)
    if stage == "stage1":
        raise ConfigError("model.merged_attention: the merged-attention model has no uni-modal stage 1; it is "
                          "pre-trained in one stage with the stage2 settings (--stage stage2, or both)")
    return ("stage2",)


def _task_args(args):
    """``evaluate``'s optional task comes before the overrides: a key=value there is an override."""
    if args.task and "=" in args.task:
        args.overrides, args.task = [args.task, *args.overrides], None
    return args


def cmd_finetune(args) -> None:
    cfg = _config(args)
    out = Path(args.out or Path(cfg.out_dir) / "finetune" / args.task)
    with _locked(out):
        _finetune(args, cfg, out)


def _finetune(args, cfg, out: Path) -> None:
    from .checkpoint.task_dir import load_task_model
    from .core.fileio import write_json
    from .train.finetune import evaluate_task, finetune

    bundle, cfg = _trained(args, cfg, args.model, load_task_model)
    if _is_main():
        save_config(cfg, out / "config.yaml")
    result = finetune(cfg, args.task, bundle, out)
    metrics = evaluate_task(cfg, args.task, bundle, out)
    if not _is_main():
        return
    print(f"{args.task}: {result.train.steps} steps on {result.examples} examples, "
          f"{result.train.samples_per_second:.1f} samples/s, last losses {result.train.last}")
    write_json(out / f"eval_{args.task}.json", metrics)
    print(json.dumps(metrics, indent=2))
    print(f"model: {result.model_dir}")


def cmd_evaluate(args) -> None:
    if _task_args(args).task:
        return cmd_evaluate_task(args)
    from .checkpoint.model_dir import load_model_dir
    from .core.errors import SkippedSamples
    from .core.fileio import write_json
    from .pipeline import evaluate

    cfg = _config(args)
    out = _eval_out(args)
    bundle, cfg = _trained(args, cfg, args.model, load_model_dir)
    skipped = SkippedSamples() if cfg.data.skip_bad else None
    result = evaluate(cfg, bundle, skipped=skipped)
    if not _is_main():
        return
    write_json(out / "eval.json", result)
    print(json.dumps(result, indent=2))
    _report_skipped(skipped, out / "skipped.json")


def _eval_out(args) -> Path:
    """Where an evaluation writes (--out, else beside the model), checked before any work."""
    from .train.trainer import check_writable

    out = Path(args.out) if args.out else Path(args.model).parent
    if _is_main():
        check_writable(out, 2**20)
    return out


def cmd_evaluate_task(args) -> None:
    from .checkpoint.task_dir import load_task_model
    from .core.fileio import write_json
    from .train.finetune import evaluate_task

    cfg = _config(args)
    out = _eval_out(args)
    bundle, cfg = _trained(args, cfg, args.model, load_task_model)
    metrics = evaluate_task(cfg, args.task, bundle, out)
    if not _is_main():
        return
    write_json(out / f"eval_{args.task}.json", metrics)
    print(json.dumps(metrics, indent=2))


def cmd_demo(args) -> None:
    from .demo import run_demo

    cfg = _config(args)
    with _locked(Path(cfg.out_dir)):
        report = run_demo(cfg, resume=not args.fresh)
    print((Path(cfg.out_dir) / "report.md").read_text())
    print(f"report: {Path(cfg.out_dir) / 'report.json'} ({report['seconds']['total']} s)")


def cmd_ablate(args) -> None:
    from .ablate import ROWS, run_ablation, select_rows

    # one evaluation subset for every row: merged attention scores every pair with ITM
    overrides = list(args.overrides)
    if not any(o.startswith("eval.max_images=") for o in overrides):
        overrides.append(f"eval.max_images={args.eval_images}")
    args.overrides = overrides
    cfg = _config(args)
    rows = select_rows(args.rows.split(",")) if args.rows else ROWS
    out = Path(args.out or Path(cfg.out_dir) / "ablation")
    run_ablation(args.config, overrides, out, args.seeds, rows)
    print((out / "ablation.md").read_text())


def cmd_convert(args) -> None:
    from .checkpoint.official import convert_official
    from .core.errors import UntrustedPickleError

    try:
        report = convert_official(args.src, args.out, trust_pickle=args.trust_pickle)
    except UntrustedPickleError as err:
        raise SystemExit(f"mvptr convert: {err}") from None
    print(json.dumps(report, indent=2))


SKIP_HELP = "leave out bad samples, count them by reason and save skipped.json, instead of stopping"
SHARD_HELP = ("do share I of N (from 0) of the input, into OUT/shard-I-of-N; `mvptr merge-shards OUT` joins "
              "the N shares (phrases: the vocabulary is built then)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvptr", description="MVPTR vision-language pre-training")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="generate the demo world, parse phrases, or build one phrase "
                                          "vocabulary over data.corpora")
    prep.add_argument("what", choices=["demo", "phrases", "vocab", "tasks", "easyvqa", "tags"])
    prep.add_argument("--instances", nargs="+", help="COCO instances JSON files (tags): their labels become "
                                                     "each image's ground-truth tags, for data.tags")
    prep.add_argument("--key", choices=["id", "stem"], default="id",
                      help="tags: name images by COCO image id (Karpathy captions' cocoid) or file name stem")
    prep.add_argument("--detector", default="data/demo/detector.safetensors",
                      help="demo detector weights that find easy-VQA's regions (easyvqa)")
    prep.add_argument("--out")
    prep.add_argument("--captions")
    prep.add_argument("--min-count", type=int, default=50)
    prep.add_argument("--train-split", default="train",
                      help="phrases: the split(s) the vocabulary counts, e.g. train+restval (Karpathy COCO)")
    prep.add_argument("--n-process", type=int, default=1)
    prep.add_argument("--n-train", type=int, default=3000)
    prep.add_argument("--n-val", type=int, default=200)
    prep.add_argument("--n-test", type=int, default=500)
    prep.add_argument("--image-size", type=int, default=96)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    prep.add_argument("--shard", type=parse_shard, metavar="I/N", help=SHARD_HELP)
    prep.add_argument("--config", default="demo", help="vocab: preset name (tiny, demo, base) or a YAML file; the "
                                                       "vocabulary goes to its data.phrase_vocab unless --out")
    prep.set_defaults(func=cmd_prepare)

    feat = sub.add_parser("features", help="extract region features from images, convert VinVL TSV features "
                                            "to a memmap float16 store, or back")
    feat.add_argument("what", choices=["convert", "export", "extract"])
    feat.add_argument("--features", help="VinVL features.tsv (convert)")
    feat.add_argument("--predictions", help="VinVL predictions.tsv (convert)")
    feat.add_argument("--feat-dim", type=int, help="expected feature width (convert; default: from the data)")
    feat.add_argument("--store", help="feature store directory (export)")
    feat.add_argument("--out", help="store directory (convert) or TSV directory (export, extract)")
    feat.add_argument("--images", help="directory of image files (extract)")
    feat.add_argument("--detector", choices=["demo", "frcnn"], default="demo",
                      help="demo: the demo world's detector; frcnn: torchvision Faster R-CNN, needs mvptr[detect]")
    feat.add_argument("--weights", help="detector weights (extract; demo default: data/demo/detector.safetensors)")
    feat.add_argument("--batch-size", type=int, default=64, help="images per detector call (extract)")
    feat.add_argument("--device", default="cpu", help="where the frcnn detector runs, e.g. cuda (extract)")
    feat.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    feat.add_argument("--shard", type=parse_shard, metavar="I/N", help=SHARD_HELP + " (extract, convert)")
    feat.set_defaults(func=cmd_features)

    merge = sub.add_parser("merge-shards", help="merge the shard-I-of-N directories of --shard runs into their "
                                                "--out directory: the output of one unsharded run")
    merge.add_argument("out", help="the --out directory the shards were written under")
    merge.set_defaults(func=cmd_merge_shards)

    def with_config(sp):
        sp.add_argument("--config", default="demo", help="preset name (tiny, demo, base) or a YAML file")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage1.epochs=2")

    pre = sub.add_parser("pretrain", help="pre-train stage 1, stage 2 or both")
    pre.add_argument("--stage", choices=["stage1", "stage2", "both"], default="both")
    pre.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    pre.add_argument("--init-model", help="model directory to start stage 2 from")
    pre.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    with_config(pre)
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="zero-shot retrieval and grounding of a model directory, or one task")
    ev.add_argument("task", nargs="?", help="retrieval, vqa, ve, grounding or easyvqa (default: zero-shot)")
    ev.add_argument("--model", required=True)
    ev.add_argument("--out", help="directory for the results (default: the model directory's parent)")
    ev.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    with_config(ev)
    ev.set_defaults(func=cmd_evaluate)

    ft = sub.add_parser("finetune", help="fine-tune a model directory on a task, then evaluate it")
    ft.add_argument("task", choices=["retrieval", "vqa", "ve", "grounding", "easyvqa"])
    ft.add_argument("--model", required=True, help="pre-trained (or fine-tuned) model directory")
    ft.add_argument("--out", help="output directory (default: <out_dir>/finetune/<task>)")
    with_config(ft)
    ft.set_defaults(func=cmd_finetune)

    demo = sub.add_parser("demo", help="prepare, pre-train and evaluate on the demo world")
    demo.add_argument("--fresh", action="store_true", help="ignore checkpoints of an earlier demo run")
    with_config(demo)
    demo.set_defaults(func=cmd_demo)

    ab = sub.add_parser("ablate", help="the paper's Table 4 on the demo world: every row pre-trained, "
                                       "evaluated and fine-tuned")
    ab.add_argument("--rows", help="comma-separated rows (default: all; the full model always runs): "
                                   "full, no_mcr_v, no_tags, no_wpg_mcr_s, no_phrases, merged_attention")
    ab.add_argument("--seeds", type=int, default=2, help="training seeds of the full model (its spread is the noise)")
    ab.add_argument("--eval-images", type=int, default=100,
                    help="test images every row is evaluated on (eval.max_images; merged attention scores every "
                         "pair with ITM)")
    ab.add_argument("--out", help="output directory (default: <out_dir>/ablation)")
    with_config(ab)
    ab.set_defaults(func=cmd_ablate)

    from .viz import add_visualize_parser

    add_visualize_parser(sub)

    conv = sub.add_parser("convert", help="an official MVPTR checkpoint as an mvptr model directory")
    conv.add_argument("what", choices=["official"])
    conv.add_argument("src", help="directory with config.json, pytorch_model.bin and id2phrase_new.json")
    conv.add_argument("out", help="model directory to write")
    conv.add_argument("--trust-pickle", action="store_true",
                      help="load pytorch_model.bin although pickle files can run code: only for trusted sources")
    conv.set_defaults(func=cmd_convert)

    from .search import add_search_parser

    add_search_parser(sub)
    from .app.serve import add_serve_parser

    add_serve_parser(sub)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but key=value overrides may also follow options that come after a
    positional argument (``mvptr finetune vqa --model DIR key=value``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        args.func(args)
    except (ConfigError, OutputDirError) as err:
        print(f"mvptr: {err}", file=sys.stderr)
        return 2
    except FormatError as err:
        sample = hasattr(args, "skip_bad") and err.reason != "model directory"
        hint = "; --skip-bad leaves such samples out" if sample else ""
        print(f"mvptr: {err}{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
