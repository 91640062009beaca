"""``mvptr features convert|export|extract`` and ``mvptr merge-shards``."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import ConfigError, FormatError, MvptrError, OutputDirError
from ..core.fileio import check_apart, output_lock
from ..vision.detect import extract_features
from ..vision.store_convert import convert_memmap_to_vinvl, convert_vinvl_to_memmap
from ..workflows.merge_shards import merge_shards
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


def cmd_features(args) -> None:
    if args.shard is not None and args.what == "export":
        raise ConfigError("features export: --shard applies to extract and convert")
    if not args.out:
        raise ConfigError(f"features {args.what}: --out is required")
    if args.feat_dim is not None and args.feat_dim <= 0:
        raise ConfigError(f"--feat-dim {args.feat_dim}: expected a positive feature width")
    # convert writes a directory that must not exist yet: its lock lies beside it
    with output_lock(shard_out(args), sibling=args.what == "convert"):
        try:
            _features(args)
        except MvptrError:
            raise
        except FileExistsError as err:
            raise OutputDirError(f"features {args.what}: {err}") from None
        except FileNotFoundError as err:
            raise FormatError(f"features {args.what}: {err}", "file not found") from None
        except ImportError as err:
            raise ConfigError(f"features {args.what}: {err}") from None
        except ValueError as err:
            raise FormatError(f"features {args.what}: {err}") from None


def _features(args) -> None:
    check_apart({"--out": args.out}, {"--features": args.features, "--predictions": args.predictions,
                                      "--images": args.images, "--store": args.store})
    skipped = skipped_samples(args)
    if args.what == "convert":
        if not args.features or not args.predictions:
            raise ConfigError("features convert: --features, --predictions and --out are required")
        out = shard_out(args)
        summary = convert_vinvl_to_memmap(args.features, args.predictions, out, feat_dim=args.feat_dim,
                                          skip=skipped, part=args.shard)
        inputs = {"features": absolute(args.features), "predictions": absolute(args.predictions),
                  "feat_dim": args.feat_dim}
    elif args.what == "export":
        if not args.store:
            raise ConfigError("features export: --store and --out are required")
        out = Path(args.out)
        summary = convert_memmap_to_vinvl(args.store, out)
    else:
        if not args.images:
            raise ConfigError("features extract: --images and --out are required")
        out = shard_out(args)
        summary = extract_features(args.images, out, args.detector, args.weights,
                                   batch_size=args.batch_size, skip=skipped, device=args.device, part=args.shard)
        inputs = {"images": absolute(args.images), "detector": args.detector, "weights": absolute(summary["weights"])}
    print(json.dumps(summary, indent=2))
    report_skipped(skipped, out / "skipped.json")
    if args.what != "export":
        finish_share(args, out, "store" if args.what == "convert" else "features", inputs, summary["num_images"])


def cmd_merge_shards(args) -> None:
    try:
        with output_lock(args.out):
            summary = merge_shards(args.out)
    except FileExistsError as err:
        if err.filename is not None:  # OUT itself is a file
            raise OutputDirError(f"{err.filename}: a file, not the --out directory of the shard runs") from None
        raise FormatError(str(err), "output exists") from None
    print(json.dumps(summary, indent=2))


def add_parser(sub) -> None:
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
