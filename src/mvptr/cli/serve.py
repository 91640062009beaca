"""``mvptr serve --index DIR``: the search page and HTTP API under uvicorn (needs mvptr[serve]).

Its errors keep the form they had before the one policy of the other commands: one line
``mvptr serve: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from ..app.serve import load_service


def _fail(message: str):
    print(f"mvptr serve: {message}", file=sys.stderr)
    raise SystemExit(2)


def cmd_serve(args) -> None:
    try:
        import uvicorn
    except ImportError as err:
        _fail(f"{err.name} is not installed: pip install 'mvptr[serve]'")
    try:
        app = load_service(args.index, args.model, args.vqa_model, args.nprobe)
    except ImportError as err:
        _fail(f"{err.name} is not installed: pip install 'mvptr[serve]'")
    except (FileNotFoundError, ValueError) as err:  # FormatError is a ValueError
        _fail(str(err))
    print(f"mvptr serve: {args.index} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="the search page and HTTP API over an index (needs mvptr[serve])",
                              description="Serve a page and an HTTP API over an index built by `mvptr search build`.")
    p.add_argument("--index", required=True, help="index directory (mvptr search build --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", help="the model the index was built with, when it is no longer where the index says")
    p.add_argument("--vqa-model", help="a model fine-tuned with `mvptr finetune vqa`, to answer questions on the page")
    p.add_argument("--nprobe", type=int, help="lists an approximate coarse stage visits per query (default: 1/8)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
