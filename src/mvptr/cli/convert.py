"""``mvptr convert official``: an official MVPTR checkpoint as an mvptr model directory."""

from __future__ import annotations

import json

from ..checkpoint.official import convert_official
from ..core.errors import FormatError, MvptrError
from ..core.fileio import check_apart, output_lock


def cmd_convert(args) -> None:
    check_apart({"the output directory": args.out}, {"the checkpoint directory": args.src})
    try:
        with output_lock(args.out, sibling=True):  # the model directory is swapped in whole: its lock lies beside it
            report = convert_official(args.src, args.out, trust_pickle=args.trust_pickle)
    except MvptrError:
        raise
    except (FileNotFoundError, ValueError) as err:  # the checkpoint's files, named in the message
        raise FormatError(f"convert official: {err}", "model directory") from None
    print(json.dumps(report, indent=2))


def add_parser(sub) -> None:
    conv = sub.add_parser("convert", help="an official MVPTR checkpoint as an mvptr model directory")
    conv.add_argument("what", choices=["official"])
    conv.add_argument("src", help="directory with config.json, pytorch_model.bin and id2phrase_new.json")
    conv.add_argument("out", help="model directory to write")
    conv.add_argument("--trust-pickle", action="store_true",
                      help="load pytorch_model.bin although pickle files can run code: only for trusted sources")
    conv.set_defaults(func=cmd_convert)
