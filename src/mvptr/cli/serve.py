"""``mvptr serve --index DIR``: the search page and HTTP API under uvicorn (needs mvptr[serve]).

Its errors keep the form they had before the one policy of the other commands: one line
``mvptr serve: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from ..app.serve import allowed_hosts, check_listen, load_service, make_server
from ..vision.detect import DETECTORS


def _fail(message: str):
    print(f"mvptr serve: {message}", file=sys.stderr)
    raise SystemExit(2)


def cmd_serve(args) -> None:
    try:
        import uvicorn  # noqa: F401  (the serve extra is installed)
    except ImportError as err:
        _fail(f"{err.name} is not installed: pip install 'mvptr[serve]'")
    try:
        hosts = allowed_hosts(args.host, args.allowed_host or [])
        check_listen(args.host, args.port)  # before the index is loaded, not after
    except ValueError as err:
        _fail(str(err))
    for flag, value, least in (("--workers", args.workers, 1), ("--queue", args.queue, 1),
                               ("--max-batch", args.max_batch, 1), ("--batch-window-ms", args.batch_window_ms, 0)):
        if value < least:
            _fail(f"{flag} must be at least {least}, not {value}")
    if args.detector_kind and not args.detector:
        _fail(f"--detector-kind {args.detector_kind} says what --detector FILE is; give --detector too")
    settings = {"workers": args.workers, "queue": args.queue, "window_ms": args.batch_window_ms,
                "max_batch": args.max_batch}
    try:
        app = load_service(args.index, args.model, args.vqa_model, args.nprobe, hosts=hosts, detector=args.detector,
                           detector_kind=args.detector_kind or "demo", **settings)
    except ImportError as err:
        _fail(f"{err.name} is not installed: pip install 'mvptr[serve]'")
    except (FileNotFoundError, ValueError) as err:  # FormatError is a ValueError
        _fail(str(err))
    try:
        check_listen(args.host, args.port)  # taken while the index loaded?
    except ValueError as err:
        _fail(str(err))
    print(f"mvptr serve: {args.index} on http://{args.host}:{args.port}/ (answering Host {', '.join(hosts)}; "
          f"OpenAPI description at /openapi.json)", flush=True)
    make_server(app, args.host, args.port, args.log_level, args.log_queries).run()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="the search page and HTTP API over an index (needs mvptr[serve])",
                              description="Serve a page and an HTTP API over an index built by `mvptr search build`.")
    p.add_argument("--index", required=True, help="index directory (mvptr search build --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name the server is reached by, besides its own (repeatable; requests for other "
                        "names are refused: DNS rebinding)")
    p.add_argument("--log-queries", action="store_true",
                   help="keep query strings in the access log (left out by default: they are what users typed)")
    p.add_argument("--model", help="the model the index was built with, when it is no longer where the index says")
    p.add_argument("--vqa-model", help="a model fine-tuned with `mvptr finetune vqa`, to answer questions on the page")
    p.add_argument("--detector", metavar="FILE",
                   help="detector weights to find the regions of uploaded images with, the detector the index's "
                        "features came from (default: the one the index records when built from --images)")
    p.add_argument("--detector-kind", choices=list(DETECTORS),
                   help="what --detector is: demo (a DemoDetector safetensors file; the default) or frcnn "
                        "(a fasterrcnn_resnet50_fpn state dict; needs mvptr[detect])")
    p.add_argument("--nprobe", type=int, help="lists an approximate coarse stage visits per query (default: the "
                                              "number chosen for the index's target recall)")
    p.add_argument("--workers", type=int, default=1,
                   help="threads that run the model (default 1: on a CPU one forward pass already uses every core)")
    p.add_argument("--queue", type=int, default=32,
                   help="requests that may wait for the model; more are answered 503 with Retry-After (default 32)")
    p.add_argument("--max-batch", type=int, default=16, help="searches run as one batch, at most (default 16)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a batch of searches waits for more to join (default 5 ms; 0: only those queued)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
