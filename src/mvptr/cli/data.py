"""``mvptr data list``: the standard data sets (files, sizes and checksums where known, download
pages) and the layout each preset expects (``mvptr.formats.catalogue``)."""

from __future__ import annotations

import json

from ..formats.catalogue import catalogue, presets, tables

HELP = "the standard data sets' files, sizes, checksums and download pages, and each preset's layout"


def cmd_data(args) -> None:
    names = [args.config] if args.config else None
    print(json.dumps(catalogue(names), indent=1) if args.json else tables(names))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help=HELP, description=HELP + ".")
    what = p.add_subparsers(dest="what", required=True)
    ls = what.add_parser("list", help=HELP, description=HELP + ".")
    ls.add_argument("--config", choices=presets(), help="one preset's layout (default: every preset's)")
    ls.add_argument("--json", action="store_true", help="as JSON: {\"datasets\": [...], \"layout\": [...]}")
    ls.set_defaults(func=cmd_data)
