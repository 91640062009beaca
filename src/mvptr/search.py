"""Search an image collection with a sentence: coarse ranking by the global embeddings, then
the multimodal encoder re-ranks the best candidates (the retrieval protocol, one query).

    mvptr search build --model runs/demo/stage2/model --config demo \\
        --features data/demo/features.tsv --predictions data/demo/predictions.tsv --out runs/demo/index
    mvptr search query runs/demo/index "a red circle left of a blue square" --top 10

An index directory holds ``index.json`` (the model, the feature store and the input limits),
``ids.json`` and ``embeddings.npy`` (one L2-normalised global embedding per image, float32).
Region outputs are not stored: re-ranking encodes its few candidates again from the store,
which keeps an index at one vector per image. Raw images are indexed through a detector
(``--images DIR --detector FILE``); their regions go to a feature store inside the index.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .api import Model, open_feature_store
from .checkpoint import replace_dir
from .config import load_config, to_dict
from .eval.retrieval import itm_scores

FORMAT = "mvptr-search/1"


@dataclass
class Hit:
    image_id: str
    score: float  # the ranking score (re-ranked candidates: ITM log-odds, plus the cosine for "itm+sim")
    similarity: float  # cosine of the global embeddings


def build_index(model_dir: str | Path, out: str | Path, features: str | None = None, predictions: str | None = None,
                config: str | None = None, images: str | None = None, detector: str | None = None,
                batch_size: int = 64) -> dict:
    """Index a feature store (``features`` [+ ``predictions``]) or a directory of image files
    (``images`` + ``detector``). The index replaces ``out`` only once it is complete."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if images:
        if not detector:
            raise ValueError("indexing image files needs a detector (--detector)")
        from .vision.detect import extract_features

        extract_features(images, tmp / "regions", "demo", detector, batch_size, progress=False)
        features, predictions = (str(out.resolve() / "regions" / n) for n in ("features.tsv", "predictions.tsv"))
        read_from = (str(tmp / "regions" / "features.tsv"), str(tmp / "regions" / "predictions.tsv"))
    elif features:
        features = str(Path(features).resolve())
        predictions = str(Path(predictions).resolve()) if predictions else ""
        read_from = (features, predictions)
    else:
        raise ValueError("give a feature store (--features) or image files (--images with --detector)")
    model = Model.load(model_dir, config, batch_size=batch_size, parse_phrases=False)
    model.require_global_embeddings("an image search index")
    store = open_feature_store(*read_from, model.model.cfg.region_feat_dim)
    ids = list(store.ids())
    embs = []
    for start in range(0, len(ids), batch_size):
        embs.append(model.encode_images([store[i] for i in ids[start : start + batch_size]]).emb.float().cpu())
    emb = torch.cat(embs).numpy() if embs else np.zeros((0, model.model.cfg.embed_dim), np.float32)
    np.save(tmp / "embeddings.npy", emb)
    (tmp / "ids.json").write_text(json.dumps(ids))
    meta = {"format": FORMAT, "model": str(Path(model_dir).resolve()), "features": features,
            "predictions": predictions, "data": to_dict(model.cfg.data), "images": len(ids),
            "embed_dim": int(emb.shape[1])}
    (tmp / "index.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, out)
    return meta


class SearchIndex:
    def __init__(self, path: str | Path, model: Model | None = None, parse_phrases: bool = True):
        path = Path(path)
        meta_file = path / "index.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file}: not found (build an index with `mvptr search build`)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: not an mvptr search index")
        self.ids = json.loads((path / "ids.json").read_text())
        self.emb = torch.from_numpy(np.load(path / "embeddings.npy"))
        if model is None:
            cfg = load_config(None, [f"data.{k}={v}" for k, v in self.meta["data"].items()
                                     if k.startswith("max_")])
            model = Model.load(self.meta["model"], cfg, parse_phrases=parse_phrases)
        self.model = model
        self.store = open_feature_store(self.meta["features"], self.meta["predictions"],
                                        model.model.cfg.region_feat_dim)

    def query(self, text: str, top: int = 10, rerank: int = 64, score: str = "itm+sim") -> list[Hit]:
        """The ``top`` images for ``text``: cosine ranking, then the best ``rerank`` by ``score``
        ("itm" = ITM log-odds, "itm+sim" = log-odds plus cosine, "uni" = no re-ranking)."""
        if score not in ("itm", "itm+sim", "uni"):
            raise ValueError(f"unknown score {score!r} (expected itm, itm+sim or uni)")
        if not text.strip():
            raise ValueError("empty query")
        if not self.ids or top < 1:
            return []
        texts = self.model.encode_texts([text])
        sim = (self.emb @ texts.emb[0].float().cpu()).float()
        k = min(max(top, rerank if score != "uni" else 0), len(sim))
        cand = sim.topk(k).indices
        ranked = sim[cand]
        if score != "uni" and rerank > 0:
            images = self.model.encode_images([self.store[self.ids[i]] for i in cand.tolist()])
            pairs = torch.stack([torch.arange(k), torch.zeros(k, dtype=torch.long)], 1)
            ranked = itm_scores(self.model.model, texts, images, pairs, self.model.batch_size, progress=False)
            if score == "itm+sim":
                ranked = ranked + sim[cand]
        order = ranked.argsort(descending=True, stable=True)[:top]
        return [Hit(self.ids[int(cand[o])], float(ranked[o]), float(sim[cand[o]])) for o in order]


def cmd_search(args) -> None:
    if args.action == "build":
        meta = build_index(args.model, args.out, args.features, args.predictions, args.config, args.images,
                           args.detector, args.batch_size)
        print(f"indexed {meta['images']} images in {args.out}")
        return
    if not args.text:
        raise SystemExit("mvptr search query: give the index directory and a sentence")
    index = SearchIndex(args.index, parse_phrases=not args.no_phrases)
    hits = index.query(args.text, args.top, args.rerank, args.score)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
        return
    for rank, h in enumerate(hits, 1):
        print(f"{rank:3d}  {h.image_id}  score {h.score:.4f}  cosine {h.similarity:.4f}")


def add_search_parser(subparsers) -> None:
    p = subparsers.add_parser("search", help="index an image collection; find images with a sentence")
    p.add_argument("action", choices=["build", "query"])
    p.add_argument("index", nargs="?", help="index directory (query)")
    p.add_argument("text", nargs="?", help="the sentence to search for (query)")
    p.add_argument("--model", help="model directory (build)")
    p.add_argument("--config", help="preset or YAML the model was trained with, for its input limits (build)")
    p.add_argument("--features", help="VinVL features.tsv or a memmap store directory (build)")
    p.add_argument("--predictions", help="VinVL predictions.tsv (build, with a TSV store)")
    p.add_argument("--images", help="a directory of image files, instead of --features (build)")
    p.add_argument("--detector", help="detector weights for --images, e.g. data/demo/detector.safetensors")
    p.add_argument("--out", help="index directory to write (build)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--rerank", type=int, default=64, help="candidates the multimodal encoder re-ranks (query)")
    p.add_argument("--score", choices=["itm", "itm+sim", "uni"], default="itm+sim")
    p.add_argument("--no-phrases", action="store_true", help="do not parse phrase concepts from the query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_checked(cmd_search))


def _checked(func):
    def run(args):
        if args.action == "build" and (not args.model or not args.out):
            raise SystemExit("mvptr search build: --model and --out are required")
        if args.action == "query" and not args.index:
            raise SystemExit("mvptr search query: give the index directory and a sentence")
        try:
            func(args)
        except (FileNotFoundError, ValueError) as err:  # FormatError is a ValueError
            raise SystemExit(f"mvptr search: {err}") from None
    return run
