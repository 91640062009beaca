"""``mvptr search build|query``: index an image collection; find images with a sentence."""

from __future__ import annotations

import json

from ..app.coarse import EXACT_LIMIT, TARGET_RECALL
from ..app.search import MAX_RERANK, MAX_TOP, SearchIndex, build_index
from ..core.errors import ConfigError, FormatError, MvptrError
from ..core.fileio import check_apart


def cmd_search(args) -> None:
    if args.action == "build" and (not args.model or not args.out):
        raise ConfigError("search build: --model and --out are required")
    if args.action == "query" and (not args.index or not args.text):
        raise ConfigError("search query: give the index directory and a sentence")
    for flag, value, least, most in (("--top", args.top, 1, MAX_TOP), ("--rerank", args.rerank, 0, MAX_RERANK),
                                     ("--batch-size", args.batch_size, 1, None), ("--nprobe", args.nprobe, 1, None),
                                     ("--exact-limit", args.exact_limit, 0, None)):
        if value is not None and (value < least or (most is not None and value > most)):
            raise ConfigError(f"{flag} {value}: expected a whole number "
                              + (f"from {least} to {most}" if most is not None else f"of at least {least}")
                              + (" (0: no re-ranking)" if flag == "--rerank" else ""))
    if args.target_recall is not None and not 0 < args.target_recall <= 1:
        raise ConfigError(f"--target-recall {args.target_recall}: expected a recall above 0 and at most 1")
    try:
        _search(args)
    except MvptrError:
        raise
    except FileNotFoundError as err:
        raise FormatError(f"search: {err}", "file not found") from None
    except ValueError as err:
        raise FormatError(f"search: {err}") from None


def _search(args) -> None:
    if args.action == "build":
        check_apart({"--out": args.out}, {"--model": args.model, "--features": args.features,
                                          "--predictions": args.predictions, "--images": args.images,
                                          "--image-dir": args.image_dir})
        meta = build_index(args.model, args.out, args.features, args.predictions, args.config, args.images,
                           detector=args.detector, batch_size=args.batch_size, image_dir=args.image_dir,
                           add=args.add, exact_limit=args.exact_limit, target_recall=args.target_recall,
                           progress=True)
        c = meta["coarse"]
        stage = c["kind"] if c["kind"] == "exact" else (f"ivf, {c['nprobe']} of {c['nlist']} lists visited, recall@"
                                                        f"{c['recall_at']} {c['recall']:.3f}")
        print(f"indexed {meta['added']} images in {args.out} ({meta['images']} in all, {meta['image_files']} with an "
              f"image file; coarse stage: {stage})")
        return
    index = SearchIndex(args.index, parse_phrases=not args.no_phrases, nprobe=args.nprobe)
    hits = index.query(args.text, args.top, args.rerank, args.score)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
        return
    for rank, h in enumerate(hits, 1):
        print(f"{rank:3d}  {h.image_id}  score {h.score:.4f}  cosine {h.similarity:.4f}")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("search", help="index an image collection; find images with a sentence")
    p.add_argument("action", choices=["build", "query"])
    p.add_argument("index", nargs="?", help="index directory (query)")
    p.add_argument("text", nargs="?", help="the sentence to search for (query)")
    p.add_argument("--model", help="model directory (build)")
    p.add_argument("--config", help="preset or YAML the model was trained with, for its input limits (build)")
    p.add_argument("--features", help="VinVL features.tsv or a memmap store directory (build)")
    p.add_argument("--predictions", help="VinVL predictions.tsv (build, with a TSV store)")
    p.add_argument("--image-dir", help="the image files of the store's ids, <id>.png/.jpg, to show them (build)")
    p.add_argument("--images", help="a directory of image files, instead of --features (build)")
    p.add_argument("--detector", help="detector weights for --images, e.g. data/demo/detector.safetensors")
    p.add_argument("--out", help="index directory to write (build)")
    p.add_argument("--add", action="store_true", help="add the images to the index at --out (build)")
    p.add_argument("--exact-limit", type=int,
                   help=f"images searched exactly; an approximate (faiss IVF) index above "
                        f"(build; default {EXACT_LIMIT})")
    p.add_argument("--target-recall", type=float,
                   help=f"recall@10 against exact search that an approximate index keeps, measured on a sample of "
                        f"it; nprobe doubles until it does (build; above 0, at most 1; default {TARGET_RECALL})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top", type=int, default=10, help=f"images to show, 1 to {MAX_TOP} (query)")
    p.add_argument("--rerank", type=int, default=64,
                   help=f"candidates the multimodal encoder re-ranks, 0 (none) to {MAX_RERANK} (query)")
    p.add_argument("--score", choices=["itm", "itm+sim", "uni"], default="itm+sim")
    p.add_argument("--nprobe", type=int,
                   help="lists an approximate coarse stage visits (query; default: the number chosen "
                        "for the index's target recall)")
    p.add_argument("--no-phrases", action="store_true", help="do not parse phrase concepts from the query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
