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
    mvptr finetune TASK --model DIR [--out DIR] [--config PRESET] [key=value ...]   (TASK: mvptr.tasks.TASKS)
    mvptr evaluate TASK --model DIR [--config PRESET] [key=value ...]
    mvptr evaluate probes --model DIR [--out DIR] [--config PRESET] [key=value ...]   (the demo world's)
    mvptr demo [--config PRESET] [--fresh] [key=value ...]
    mvptr ablate [--config PRESET] [--rows full,no_mcr_v,...] [--seeds N] [--out DIR] [key=value ...]
    mvptr convert official SRC_DIR OUT_DIR [--trust-pickle]
    mvptr search build|query ...
    mvptr serve --index DIR [--host 127.0.0.1] [--port 8000] [--vqa-model DIR]
    mvptr doctor [--config PRESET] [--stage stage1|stage2|both|none] [--task TASK ...] [key=value ...]
    mvptr data list [--config PRESET] [--json]

Every command that takes ``key=value`` overrides saves the resolved configuration with its outputs
(``doctor`` writes nothing: with a run's preset and overrides it opens every file that run would read
with the run's own readers, counts the captioned images without features and the captions without
phrases, estimates the disk the checkpoints need, and names the device and precision, one line per
check; the first problem that would stop the run is its one-line error, exit status 2).

One error policy: an error the user can fix (:class:`mvptr.core.errors.MvptrError`: a bad
file, setting or output directory) is one line on stderr and exit status 2, and so is an
operating-system error on a path the user gave (missing, a file where a directory goes, a
directory where a file goes), and so is a full disk (the path being written; what was there
before stays whole); any other exception is a bug and keeps its traceback (exit
status 1). One module per command group.

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
import errno
import importlib
import sys

from ..core.errors import FormatError, MvptrError
from ..core.version import __version__

__all__ = ["COMMANDS", "main", "parse", "build_parser"]

# command -> (the cli module that implements it, its one-line help). Only the chosen command's
# module is imported (it imports torch): `mvptr --help` reads this table alone. A module that
# implements several commands registers all of them (its add_parsers), in this order.
COMMANDS = {
    "prepare": ("mvptr.cli.prepare", "generate the demo world, parse phrases, or build one phrase vocabulary over "
                                     "data.corpora"),
    "features": ("mvptr.cli.features", "extract region features from images, convert VinVL TSV features to a memmap "
                                       "float16 store, or back"),
    "merge-shards": ("mvptr.cli.features", "merge the shard-I-of-N directories of --shard runs into their --out "
                                           "directory: the output of one unsharded run"),
    "pretrain": ("mvptr.cli.train", "pre-train stage 1, stage 2 or both"),
    "finetune": ("mvptr.cli.train", "fine-tune a model directory on a task, then evaluate it"),
    "evaluate": ("mvptr.cli.evaluate", "zero-shot retrieval and grounding of a model directory, one task, or the "
                                       "demo world's compositional probes"),
    "demo": ("mvptr.cli.demo", "prepare, pre-train and evaluate on the demo world"),
    "ablate": ("mvptr.cli.demo", "the paper's Table 4 on the demo world: every row pre-trained, evaluated and "
                                 "fine-tuned"),
    "visualize": ("mvptr.cli.visualize", "figures: training curves, phrase grounding, attention, concepts"),
    "convert": ("mvptr.cli.convert", "an official MVPTR checkpoint as an mvptr model directory"),
    "search": ("mvptr.cli.search", "index an image collection; find images with a sentence"),
    "serve": ("mvptr.cli.serve", "the search page and HTTP API over an index (needs mvptr[serve])"),
    "doctor": ("mvptr.cli.doctor", "check a run's data files, disk, device and precision before it starts"),
    "data": ("mvptr.cli.data", "the standard data sets' files, sizes, checksums and download pages, and each "
                               "preset's layout"),
}


def build_parser(*commands: str) -> argparse.ArgumentParser:
    """The ``mvptr`` parser: every command listed with its help, and the full options of the
    named ``commands`` (their modules imported here); ``build_parser()`` imports none."""
    p = argparse.ArgumentParser(prog="mvptr", description="MVPTR vision-language pre-training")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    full = {COMMANDS[c][0] for c in commands}
    registered: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if module not in full:
            sub.add_parser(name, help=help_text)
        elif module not in registered:
            registered.add(module)
            cli = importlib.import_module(module)
            (getattr(cli, "add_parsers", None) or cli.add_parser)(sub)
    return p


def chosen_command(argv: list[str]) -> str | None:
    """The command an argument list runs (its first word), or None (``--help``, ``--version``, a typo)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but key=value overrides may also follow options that come after a
    positional argument (``mvptr finetune vqa --model DIR key=value``). Only the chosen
    command's module is imported."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    parser = build_parser(*([command] if command else []))
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
    except MvptrError as err:
        sample = isinstance(err, FormatError) and hasattr(args, "skip_bad") and err.reason not in NOT_SAMPLES
        hint = "; --skip-bad leaves such samples out" if sample else ""
        print(f"mvptr: {err}{hint}", file=sys.stderr)
        return 2
    except OSError as err:  # a path of the user's: missing, a file where a directory goes, ...
        if err.errno in FULL:  # a full disk: what was written before stays whole (atomic writes)
            where = err.filename or getattr(args, "out", None) or "the output"
            print(f"mvptr: {where}: {FULL[err.errno]}; free some space (or write elsewhere) and run the command "
                  "again", file=sys.stderr)
            return 2
        if err.filename is None and not isinstance(err, (FileNotFoundError, FileExistsError)):
            raise
        where = f"{err.filename}: {err.strerror}" if err.filename is not None else str(err)
        print(f"mvptr: {where}; {PATH_HINTS.get(type(err), 'check the path')}", file=sys.stderr)
        return 2
    return 0


FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
PATH_HINTS = {FileExistsError: "a file stands where a directory is needed: move it or choose another path",
              NotADirectoryError: "a file stands where a directory is needed: move it or choose another path",
              IsADirectoryError: "a directory stands where a file is needed: give the file's path"}

# reasons of a FormatError that are not about one sample: --skip-bad would not help
NOT_SAMPLES = ("model directory", "file not found", "input or output", "output exists", "stale index", "no captions",
               "malformed input", "bad image id map", "bad image id pattern", "bad tag file", "bad VQA file",
               "bad COCO instances file", "no split", "old phrase cache", "loss not finite",
               "no task images", "file not UTF-8")
