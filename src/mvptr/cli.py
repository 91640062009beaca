"""The ``mvptr`` command.

    mvptr prepare demo [--out DIR] [--n-train N] [--n-val N] [--n-test N] [--seed S]
    mvptr prepare phrases --captions FILE --out DIR [--min-count K] [--n-process P] [--skip-bad]
    mvptr prepare vocab [--config PRESET] [--min-count K] [--out FILE] [--skip-bad]
    mvptr prepare tasks [--out DIR]               (the demo world's VQA / SNLI-VE / grounding files)
    mvptr prepare easyvqa [--out DIR] [--detector FILE]
    mvptr features convert --features F.tsv --predictions P.tsv --out DIR [--feat-dim D] [--skip-bad]
    mvptr features export --store DIR --out DIR
    mvptr features extract --images DIR --out DIR [--detector demo|frcnn] [--weights FILE] [--device D] [--skip-bad]
    mvptr pretrain [--config PRESET] [--stage stage1|stage2|both] [--resume] [--skip-bad] [key=value ...]
    mvptr evaluate --model DIR [--config PRESET] [--skip-bad] [key=value ...]
    mvptr finetune retrieval|vqa|ve|grounding|easyvqa --model DIR [--out DIR] [--config PRESET] [key=value ...]
    mvptr evaluate retrieval|vqa|ve|grounding|easyvqa --model DIR [--config PRESET] [key=value ...]
    mvptr demo [--config PRESET] [--fresh] [key=value ...]
    mvptr convert official SRC_DIR OUT_DIR [--trust-pickle]
    mvptr search build|query ...
    mvptr serve --index DIR [--host 127.0.0.1] [--port 8000] [--vqa-model DIR]

Every command that takes ``key=value`` overrides saves the resolved configuration with its outputs.
With ``--skip-bad`` (``data.skip_bad=true``) a bad sample is left out instead of stopping the
command; the skipped samples are counted by reason, printed at the end (on stderr) and saved
as ``skipped.json`` beside the command's outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_config, save_config
from .data.formats import FormatError


def _config(args):
    overrides = list(args.overrides) + (["data.skip_bad=true"] if getattr(args, "skip_bad", False) else [])
    cfg = load_config(args.config, overrides)
    from .distributed import from_env
    from .pipeline import configure_torch

    configure_torch(cfg)
    from_env(cfg.device)  # under torchrun: join the process group before touching a GPU
    return cfg


def _is_main() -> bool:
    """Whether this process writes files and prints (always, outside torchrun)."""
    from .distributed import active

    return active().main


def _skipped(args):
    from .data.formats import SkippedSamples

    return SkippedSamples() if args.skip_bad else None


def _report_skipped(skipped, path: Path) -> None:
    if skipped is not None:
        skipped.save(path)
        print(f"{skipped.report()}\n(details: {path})", file=sys.stderr)


def cmd_prepare(args) -> None:
    if args.what == "demo":
        from .data.demo_world import generate_demo_world

        summary = generate_demo_world(args.out or "data/demo", n_train=args.n_train, n_val=args.n_val,
                                      n_test=args.n_test, seed=args.seed, image_size=args.image_size)
        print(json.dumps(summary, indent=2, default=str))
    elif args.what == "tasks":
        from .data.demo_tasks import prepare_demo_tasks

        print(json.dumps(prepare_demo_tasks(args.out or "data/demo"), indent=2))
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
        try:
            stats = prepare_phrases(args.captions, args.out, min_count=args.min_count, n_process=args.n_process,
                                    skip=skipped)
        except FormatError as err:
            raise SystemExit(f"mvptr prepare phrases: {err}") from None
        print(json.dumps(stats, indent=2))
        _report_skipped(skipped, Path(args.out) / "skipped.json")


def cmd_features(args) -> None:
    from .vision.stores import convert_memmap_to_vinvl, convert_vinvl_to_memmap

    skipped = _skipped(args)
    try:
        if args.what == "convert":
            if not args.features or not args.predictions or not args.out:
                raise SystemExit("mvptr features convert: --features, --predictions and --out are required")
            summary = convert_vinvl_to_memmap(args.features, args.predictions, args.out, feat_dim=args.feat_dim,
                                              skip=skipped)
        elif args.what == "export":
            if not args.store or not args.out:
                raise SystemExit("mvptr features export: --store and --out are required")
            summary = convert_memmap_to_vinvl(args.store, args.out)
        else:
            if not args.images or not args.out:
                raise SystemExit("mvptr features extract: --images and --out are required")
            from .vision.detect import extract_features

            summary = extract_features(args.images, args.out, args.detector, args.weights,
                                       batch_size=args.batch_size, skip=skipped, device=args.device)
    except (FormatError, FileExistsError, FileNotFoundError, ImportError, ValueError) as err:
        raise SystemExit(f"mvptr features {args.what}: {err}") from None
    print(json.dumps(summary, indent=2))
    _report_skipped(skipped, Path(args.out) / "skipped.json")


def cmd_pretrain(args) -> None:
    from .checkpoint import load_model_dir
    from .data.formats import SkippedSamples
    from .pipeline import new_bundle, pretrain_stage, training_tag_vocab
    from .text.phrases import PhraseVocab

    cfg = _config(args)
    out = Path(cfg.out_dir)
    if _is_main():
        save_config(cfg, out / "config.yaml")
    if args.stage == "stage2" and args.init_model:
        bundle = load_model_dir(args.init_model, cfg.device)
    elif args.stage == "stage2":
        bundle = load_model_dir(out / "stage1" / "model", cfg.device)
    else:
        bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    for name in ("stage1", "stage2") if args.stage == "both" else (args.stage,):
        skipped = SkippedSamples() if cfg.data.skip_bad else None
        result = pretrain_stage(cfg, getattr(cfg, name), bundle, out / name, resume=args.resume, skipped=skipped)
        if _is_main():
            print(f"{name}: {result.steps} steps, {result.samples_per_second:.1f} samples/s, last losses {result.last}")
            _report_skipped(skipped, out / name / "skipped.json")


def _task_args(args):
    """``evaluate``'s optional task comes before the overrides: a key=value there is an override."""
    if args.task and "=" in args.task:
        args.overrides, args.task = [args.task, *args.overrides], None
    return args


def cmd_finetune(args) -> None:
    from .pipeline import write_json
    from .train.finetune import evaluate_task, finetune, load_task_model

    cfg = _config(args)
    out = Path(args.out or Path(cfg.out_dir) / "finetune" / args.task)
    if _is_main():
        save_config(cfg, out / "config.yaml")
    bundle = load_task_model(args.model, cfg.device)
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
    from .checkpoint import load_model_dir
    from .data.formats import SkippedSamples
    from .pipeline import evaluate, write_json

    cfg = _config(args)
    bundle = load_model_dir(args.model, cfg.device)
    skipped = SkippedSamples() if cfg.data.skip_bad else None
    result = evaluate(cfg, bundle, skipped=skipped)
    if not _is_main():
        return
    write_json(Path(args.model).parent / "eval.json", result)
    print(json.dumps(result, indent=2))
    _report_skipped(skipped, Path(args.model).parent / "skipped.json")


def cmd_evaluate_task(args) -> None:
    from .pipeline import write_json
    from .train.finetune import evaluate_task, load_task_model

    cfg = _config(args)
    out = Path(args.model).parent
    metrics = evaluate_task(cfg, args.task, load_task_model(args.model, cfg.device), out)
    if not _is_main():
        return
    write_json(out / f"eval_{args.task}.json", metrics)
    print(json.dumps(metrics, indent=2))


def cmd_demo(args) -> None:
    from .demo import run_demo

    cfg = _config(args)
    report = run_demo(cfg, resume=not args.fresh)
    print((Path(cfg.out_dir) / "report.md").read_text())
    print(f"report: {Path(cfg.out_dir) / 'report.json'} ({report['seconds']['total']} s)")


def cmd_convert(args) -> None:
    from .checkpoint import UntrustedPickleError
    from .model.convert import convert_official

    try:
        report = convert_official(args.src, args.out, trust_pickle=args.trust_pickle)
    except UntrustedPickleError as err:
        raise SystemExit(f"mvptr convert: {err}") from None
    print(json.dumps(report, indent=2))


SKIP_HELP = "leave out bad samples, count them by reason and save skipped.json, instead of stopping"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvptr", description="MVPTR vision-language pre-training")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="generate the demo world, parse phrases, or build one phrase "
                                          "vocabulary over data.corpora")
    prep.add_argument("what", choices=["demo", "phrases", "vocab", "tasks", "easyvqa"])
    prep.add_argument("--detector", default="data/demo/detector.safetensors",
                      help="demo detector weights that find easy-VQA's regions (easyvqa)")
    prep.add_argument("--out")
    prep.add_argument("--captions")
    prep.add_argument("--min-count", type=int, default=50)
    prep.add_argument("--n-process", type=int, default=1)
    prep.add_argument("--n-train", type=int, default=3000)
    prep.add_argument("--n-val", type=int, default=200)
    prep.add_argument("--n-test", type=int, default=500)
    prep.add_argument("--image-size", type=int, default=96)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    prep.add_argument("--config", default="demo", help="vocab: preset name in configs/ or a YAML file; the "
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
    feat.set_defaults(func=cmd_features)

    def with_config(sp):
        sp.add_argument("--config", default="demo", help="preset name in configs/ or a YAML file")
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
    except ConfigError as err:
        print(f"mvptr: {err}", file=sys.stderr)
        return 2
    except FormatError as err:
        hint = "; --skip-bad leaves such samples out" if hasattr(args, "skip_bad") else ""
        print(f"mvptr: {err}{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
