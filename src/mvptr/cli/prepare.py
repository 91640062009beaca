"""``mvptr prepare demo|phrases|vocab|tasks|tags|easyvqa``: data a run reads, made once.

The demo world's sizes and its seed default to the ``--config`` preset's ``demo`` section and
``seed``, the phrase vocabulary's ``--min-count`` to its ``data.phrase_min_count`` (50 with
``base``, the paper's; 5 with ``demo``): the configuration is their one source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.errors import ConfigError
from ..core.fileio import output_lock
from ..core.validation import check_world_size
from ..data.pretrain import mix_phrase_vocab
from ..demo.easyvqa import easy_vqa_package, prepare_easyvqa
from ..demo.tasks import prepare_demo_tasks
from ..demo.world import generate_demo_world
from ..formats.tags import tags_from_coco_instances, write_tag_file
from ..tasks import load_config
from ..text.phrases import prepare_phrases
from .common import (
    SHARD_HELP,
    SKIP_HELP,
    absolute,
    finish_share,
    parse_shard,
    report_skipped,
    shard_out,
    skipped_samples,
)


def cmd_prepare(args) -> None:
    if args.shard is not None and args.what != "phrases":
        raise ConfigError(f"prepare {args.what}: --shard applies to prepare phrases")
    cfg = load_config(args.config)
    d = cfg.demo
    min_count = cfg.data.phrase_min_count if args.min_count is None else args.min_count
    if args.what == "demo":
        pick = lambda value, default: default if value is None else value  # noqa: E731
        check_world_size(pick(args.n_train, d.n_train), pick(args.n_val, d.n_val), pick(args.n_test, d.n_test),
                         pick(args.image_size, d.image_size),
                         {k: f"--{k.replace('_', '-')}" for k in ("n_train", "n_val", "n_test", "image_size")})
        sizes = {k: pick(getattr(args, k), getattr(d, k)) for k in ("n_train", "n_val", "n_test", "image_size")}
        with output_lock(args.out or d.data_dir):
            summary = generate_demo_world(args.out or d.data_dir, seed=pick(args.seed, cfg.seed), **sizes)
        print(json.dumps(summary, indent=2, default=str))
    elif args.what == "tasks":
        with output_lock(args.out or d.data_dir):
            print(json.dumps(prepare_demo_tasks(args.out or d.data_dir), indent=2))
    elif args.what == "tags":
        if not args.instances or not args.out:
            raise ConfigError("prepare tags: --instances and --out are required")
        tags = tags_from_coco_instances(args.instances, args.key)
        with output_lock(args.out, sibling=True):
            write_tag_file(args.out, tags)
        print(json.dumps({"out": args.out, "images": len(tags), "tags": sum(map(len, tags.values())),
                          "classes": len({t for v in tags.values() for t in v})}, indent=2))
    elif args.what == "easyvqa":
        detector = args.detector or str(Path(d.data_dir) / "detector.safetensors")
        easy_vqa_package()  # a missing extra is said before anything is written, the lock included
        with output_lock(args.out or str(Path(d.data_dir) / "easyvqa")):
            print(json.dumps(prepare_easyvqa(args.out or str(Path(d.data_dir) / "easyvqa"), detector), indent=2))
    elif args.what == "vocab":
        # one phrase vocabulary over all corpora of data.corpora (or the single corpus)
        out = Path(args.out or cfg.data.phrase_vocab)
        skipped = skipped_samples(args)
        vocab, captions = mix_phrase_vocab(cfg.data, min_count, skipped)
        with output_lock(out, sibling=True):
            vocab.save(out)
        print(json.dumps({"out": str(out), "captions": captions, "vocab_size": len(vocab),
                          "min_count": min_count}, indent=2))
        report_skipped(skipped, out.with_name("skipped.json"))
    else:
        _phrases(args, min_count)


def _phrases(args, min_count: int) -> None:
    if not args.captions or not args.out:
        raise ConfigError("prepare phrases: --captions and --out are required")
    skipped = skipped_samples(args)
    out = shard_out(args)
    with output_lock(out):  # two runs would interleave their appends to the cache
        stats = prepare_phrases(args.captions, out, min_count=min_count, n_process=args.n_process,
                                skip=skipped, part=args.shard, splits=(args.train_split,))
        print(json.dumps(stats, indent=2))
        report_skipped(skipped, out / "skipped.json")
        finish_share(args, out, "phrases", {"captions": absolute(args.captions), "min_count": min_count,
                                            "splits": [args.train_split]}, stats.get("captions"))


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def add_parser(sub) -> None:
    prep = sub.add_parser("prepare", help="generate the demo world, parse phrases, or build one phrase "
                                          "vocabulary over data.corpora")
    prep.add_argument("what", choices=["demo", "phrases", "vocab", "tasks", "easyvqa", "tags"])
    prep.add_argument("--instances", nargs="+", help="COCO instances JSON files (tags): their labels become "
                                                     "each image's ground-truth tags, for data.tags")
    prep.add_argument("--key", choices=["id", "stem"], default="id",
                      help="tags: name images by COCO image id (Karpathy captions' cocoid) or file name stem")
    prep.add_argument("--detector", help="demo detector weights that find easy-VQA's regions (easyvqa; default: "
                                         "detector.safetensors in the preset's demo.data_dir)")
    prep.add_argument("--out")
    prep.add_argument("--captions")
    prep.add_argument("--min-count", type=int, help="phrase vocabulary threshold (default: the preset's "
                                                    "data.phrase_min_count)")
    prep.add_argument("--train-split", default="train",
                      help="phrases: the split(s) the vocabulary counts, e.g. train+restval (Karpathy COCO)")
    prep.add_argument("--n-process", type=positive_int, default=1, help="phrases: parsing processes")
    prep.add_argument("--n-train", type=int, help="demo: training images (default: the preset's demo.n_train)")
    prep.add_argument("--n-val", type=int, help="demo: validation images (default: demo.n_val)")
    prep.add_argument("--n-test", type=int, help="demo: test images (default: demo.n_test)")
    prep.add_argument("--image-size", type=int, help="demo: image side in pixels (default: demo.image_size)")
    prep.add_argument("--seed", type=int, help="demo: the world's seed (default: the preset's seed)")
    prep.add_argument("--skip-bad", action="store_true", help=SKIP_HELP)
    prep.add_argument("--shard", type=parse_shard, metavar="I/N", help=SHARD_HELP)
    prep.add_argument("--config", default="demo", help="preset name (tiny, demo, base) or a YAML file: the defaults "
                                                       "above, and for vocab its data.corpora and data.phrase_vocab "
                                                       "(the vocabulary's file unless --out)")
    prep.set_defaults(func=cmd_prepare)
