"""What the commands share: the run's configuration from the command line, the output lock,
``--skip-bad`` and ``--shard I/N``, and the help texts of the options they have in common."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

from ..checkpoint.model_dir import adopt_model_settings
from ..core.distributed import active, from_env
from ..core.errors import FormatError, MvptrError, SkippedSamples
from ..core.fileio import output_lock
from ..core.runtime import configure_torch
from ..core.shards import finish_shard, shard_dir
from ..tasks import load_config

SKIP_HELP = "leave out bad samples, count them by reason and save skipped.json, instead of stopping"
SHARD_HELP = ("do share I of N (from 0) of the input, into OUT/shard-I-of-N; `mvptr merge-shards OUT` joins "
              "the N shares (phrases: the vocabulary is built then)")


def add_config_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--config", default="demo", help="preset name (tiny, demo, base) or a YAML file")
    sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage1.epochs=2")


def run_config(args):
    """The run's configuration (preset, overrides, ``--skip-bad``), torch set up for it, and
    under torchrun the process group joined before anything touches a GPU."""
    overrides = list(args.overrides) + (["data.skip_bad=true"] if getattr(args, "skip_bad", False) else [])
    cfg = load_config(args.config, overrides)
    configure_torch(cfg)
    from_env(cfg.device)
    return cfg


def is_main() -> bool:
    """Whether this process writes files and prints (always, outside torchrun)."""
    return active().main


def skipped_samples(args) -> SkippedSamples | None:
    return SkippedSamples() if args.skip_bad else None


def report_skipped(skipped: SkippedSamples | None, path: Path) -> None:
    if skipped is not None:
        skipped.save(path)
        print(f"{skipped.report()}\n(details: {path})", file=sys.stderr)


def merge_skipped(*parts: SkippedSamples | None) -> SkippedSamples | None:
    """The skipped samples of several readings (training, then evaluation), each problem once."""
    if all(p is None for p in parts):
        return None
    merged, seen = SkippedSamples(), set()
    for part in parts:
        for e in part.entries if part is not None else ():
            if (e["reason"], e["message"]) not in seen:
                seen.add((e["reason"], e["message"]))
                merged.entries.append(e)
    return merged


def skipped_steps_note(result) -> str:
    """", N steps skipped (loss not finite)" for a summary line, when training skipped any."""
    n = getattr(result, "skipped_steps", 0)
    return f", {n} step{'s' if n != 1 else ''} skipped (loss not finite)" if n else ""


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N) with 0 <= I < N; a bad value is a usage error (exit 2)."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (share I of N, counted from 0), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def absolute(path) -> str:
    return str(Path(path).resolve())


def shard_out(args) -> Path:
    """Where the command writes: ``--out``, or its shard directory with ``--shard I/N``."""
    return Path(args.out) if args.shard is None else shard_dir(args.out, args.shard)


def finish_share(args, out: Path, kind: str, inputs: dict, items: int) -> None:
    """With ``--shard I/N``: mark the share done (``merge-shards`` merges only finished ones)."""
    if args.shard is None:
        return
    finish_shard(out, kind, args.shard, {**inputs, "skip_bad": bool(args.skip_bad)}, items)
    print(f"shard {args.shard[0]}/{args.shard[1]} done; when all {args.shard[1]} are: "
          f"mvptr merge-shards {args.out}", file=sys.stderr)


def trained(args, cfg, path, load):
    """A trained model directory and the run's config with its settings (see
    ``checkpoint.model_dir.adopt_model_settings``)."""
    try:
        bundle = load(path, cfg.device)
    except MvptrError:
        raise
    except (FileNotFoundError, ValueError) as err:  # the model directory's files, named in the message
        raise FormatError(str(err), "model directory") from None
    return bundle, adopt_model_settings(cfg, bundle, args.overrides, str(path))


def locked(out: Path):
    """The output directory's lock, taken by the process that writes (the first, under torchrun)."""
    return output_lock(out) if is_main() else contextlib.nullcontext()
