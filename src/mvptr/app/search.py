"""Search an image collection with a sentence: coarse ranking by the global embeddings, then
the multimodal encoder re-ranks the best candidates (the retrieval protocol, one query).

    mvptr search build --model runs/demo/stage2/model --config demo \\
        --features data/demo/features.tsv --predictions data/demo/predictions.tsv \\
        --image-dir data/demo/images --out runs/demo/index
    mvptr search build --model runs/demo/stage2/model --images more/ --detector FILE --out runs/demo/index --add
    mvptr search query runs/demo/index "a red circle left of a blue square" --top 10

An index directory holds ``index.json`` (the model and a fingerprint of its files, the feature
stores and, for those built from image files, their detector, the input limits, the coarse
stage), ``ids.json``, ``embeddings.npy`` (one L2-normalised global embedding per image,
float32, memory-mapped when searched), ``files.json`` (the image file of each image id that
has one) and, above ``--exact-limit`` images, ``coarse.faiss`` (see :mod:`mvptr.app.coarse`). Region outputs
are not stored: re-ranking encodes its few candidates again from the store, which keeps an
index at one vector per image. Raw images are indexed through a detector (``--images DIR
--detector FILE``); their regions go to a feature store inside the index. ``--add`` adds
the images of another store or directory to an existing index built with the same model.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint.model_dir import LIMIT_KEYS, defines_model
from ..checkpoint.task_dir import HEAD_FILE, TASK_FILE
from ..core.config import Config, load_config, to_dict
from ..core.errors import ConfigError, FormatError, MissingFileError, WrongTypeError
from ..core.fileio import load_json, output_lock, replace_dir, tmp_dir
from ..eval.retrieval import itm_scores
from ..vision.detect import extract_features
from .api import Model, check_count, check_text, open_feature_store
from .coarse import EXACT_LIMIT, IVF_FILE, TARGET_RECALL, CoarseIndex, check_target, write_ivf
from .images import image_files

FORMAT = "mvptr-search/2"
REBUILD = "rebuild it with `mvptr search build`"
MAX_TOP = 100  # images one query returns, at most (the HTTP API's limits too)
MAX_RERANK = 200  # candidates one query re-ranks, at most


@dataclass
class Hit:
    image_id: str
    score: float  # the ranking score (re-ranked candidates: ITM log-odds, plus the cosine for "itm+sim")
    similarity: float  # cosine of the global embeddings


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of the files that define the model, names and contents (settings, weights,
    tokenizer, vocabularies, a task head; not a training state, results or other files beside
    them): an index is only valid for the model that computed its embeddings."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingFileError(f"{model_dir}: model directory not found")
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.iterdir() if p.is_file() and defines_model(p.name, (TASK_FILE, HEAD_FILE))):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_meta(path: Path) -> dict:
    meta_file = path / "index.json"
    if not meta_file.exists():
        raise MissingFileError(f"{meta_file}: not found (build an index with `mvptr search build`)")
    meta = _load_json(meta_file)
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("mvptr-search/"):
        raise FormatError(f"{meta_file}: not an mvptr search index")
    if meta["format"] != FORMAT:
        raise FormatError(f"{meta_file}: index format {meta['format']}, this mvptr reads {FORMAT}; {REBUILD}",
                          "stale index")
    return meta


def _load_json(path: Path):
    """A JSON file of an index; one that is not JSON is a FormatError naming it and saying how to rebuild."""
    try:
        return load_json(path)
    except FormatError as err:
        raise FormatError(f"{err}; {REBUILD}", err.reason) from None


def _load_list(path: Path, kind: type):
    value = _load_json(path)
    if not isinstance(value, kind):
        raise FormatError(f"{path}: expected a JSON {'list' if kind is list else 'object'}, not "
                          f"{type(value).__name__}; {REBUILD}")
    return value


def _load_embeddings(path: Path, rows: int) -> np.ndarray:
    """The index's embeddings, memory-mapped copy-on-write; a truncated or damaged file names itself."""
    try:
        emb = np.load(path, mmap_mode="c")  # copy-on-write: a tensor can view it
    except FileNotFoundError:
        raise FormatError(f"{path}: not found; {REBUILD}", "file not found") from None
    except (ValueError, OSError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FormatError(f"{path}: not a readable array, truncated or damaged ({first}); {REBUILD}") from None
    if emb.ndim != 2 or len(emb) != rows:
        raise FormatError(f"{path}: {len(emb) if emb.ndim else 0} embeddings (shape {emb.shape}) for {rows} image "
                          f"ids; {REBUILD}")
    return emb


def check_model(meta: dict, model_dir: Path, index_dir: Path, fingerprint: str | None = None) -> None:
    """Refuse a model other than the one that computed the index's embeddings."""
    if (fingerprint or model_fingerprint(model_dir)) != meta["model_fingerprint"]:
        raise FormatError(f"{index_dir}: built with another version of the model than {model_dir} (the model "
                          f"files differ from those indexed, {meta['model']}); {REBUILD}, or give the model it was "
                          "built with",
                          "stale index")


def index_config(meta: dict) -> Config:
    """The input limits the index was built with."""
    return load_config(None, [f"data.{k}={v}" for k, v in meta["data"].items() if k.startswith("max_")])


def index_limits(meta: dict) -> dict[str, int]:
    """The input limits the index was built with, by name: its embeddings were computed with
    them, so a model that adds to it or searches it takes them over any others."""
    return {k: v for k, v in meta["data"].items() if k in LIMIT_KEYS}


def _start(out: Path, add: bool, model_dir: Path, fingerprint: str) -> tuple[Path, dict | None]:
    """A fresh temporary directory beside ``out`` (``out.tmp.<pid>.<random>``) holding, with
    ``add``, the region stores of the index at ``out`` (hard links: nothing in them is
    rewritten) and that index's metadata."""
    old = read_meta(out) if add else None
    if old:
        check_model(old, model_dir, out, fingerprint)
    tmp = tmp_dir(out)
    for sub in (p for p in out.iterdir() if p.is_dir()) if add else ():
        shutil.copytree(sub, tmp / sub.name, copy_function=os.link)
    return tmp, old


def _embed(model: Model, store, ids: list[str], out_file: Path, old_file: Path | None, dim: int,
           *, batch_size: int, progress: bool = False) -> int:
    """Write ``embeddings.npy``: the old index's rows, then those of ``ids``, into a memory map
    (``progress``: a progress bar of the images encoded)."""
    old = np.load(old_file, mmap_mode="r") if old_file else np.zeros((0, dim), np.float32)
    emb = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.float32, shape=(len(old) + len(ids), dim))
    for s in range(0, len(old), 65536):
        stop = min(s + 65536, len(old))
        emb[s:stop] = old[s:stop]
    with tqdm(total=len(ids), desc="embedding", unit="image", disable=not progress) as bar:
        for s in range(0, len(ids), batch_size):
            batch = [store[i] for i in ids[s : s + batch_size]]
            emb[len(old) + s : len(old) + s + len(batch)] = model.encode_images(batch).emb.float().cpu().numpy()
            bar.update(len(batch))
    emb.flush()
    return len(emb)


def build_index(model_dir: str | Path, out: str | Path, features: str | None = None, predictions: str | None = None,
                config: str | None = None, images: str | None = None, *, detector: str | None = None,
                batch_size: int = 64, image_dir: str | None = None, add: bool = False,
                exact_limit: int | None = None, target_recall: float | None = None, progress: bool = False) -> dict:
    """Index a feature store (``features`` [+ ``predictions``]; ``image_dir``: where the image
    files are, for showing them) or a directory of image files (``images`` + ``detector``).
    With ``add``, the images join the index at ``out``. Above ``exact_limit`` images the coarse
    stage is approximate, visiting as few lists as reach ``target_recall`` (recall@10 against
    exact search, measured on a sample of the index; default 0.95, or that of the index
    added to). ``progress``: progress bars of the detector and the encoder. The index replaces
    ``out`` only once it is complete; while it is built, ``out``'s lock (``out.lock`` beside
    it) keeps a second build of it out."""
    out = Path(out)
    for what, value in (("model_dir", model_dir), ("out", out), ("features", features), ("predictions", predictions),
                        ("images", images), ("detector", detector), ("image_dir", image_dir)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise WrongTypeError(f"{what}: expected a path (str or Path), got {type(value).__name__}")
    check_count(batch_size, "batch_size")
    if exact_limit is not None:
        check_count(exact_limit, "exact_limit", 0)
    if target_recall is not None:
        check_target(target_recall)
    with output_lock(out, sibling=True):
        return _build_index(model_dir, out, add, features=features, predictions=predictions, config=config,
                            images=images, detector=detector, batch_size=batch_size, image_dir=image_dir,
                            exact_limit=exact_limit, target_recall=target_recall, progress=progress)


def _build_index(model_dir, out: Path, add: bool, *, features, predictions, config, images, detector, batch_size,
                 image_dir, exact_limit, target_recall, progress) -> dict:
    if add and config:
        raise ConfigError("--add encodes with the input limits of the index; leave out --config")
    if not images and not features:
        raise ConfigError("give a feature store (--features) or image files (--images with --detector)")
    if images and not detector:
        raise ConfigError("indexing image files needs a detector (--detector)")
    fingerprint = model_fingerprint(model_dir)
    tmp, old = _start(out, add, Path(model_dir), fingerprint)
    if images:
        part = "regions" if not old else f"regions-{len(old['stores'])}"
        extract_features(images, tmp / part, "demo", detector, batch_size, progress=progress)
        features, predictions = (str(out.resolve() / part / n) for n in ("features.tsv", "predictions.tsv"))
        read_from = (str(tmp / part / "features.tsv"), str(tmp / part / "predictions.tsv"))
        image_dir = images
    else:
        features = str(Path(features).resolve())
        predictions = str(Path(predictions).resolve()) if predictions else ""
        read_from = (features, predictions)
    model = Model.from_pretrained(model_dir, None if old else config, limits=index_limits(old) if old else None,
                                  batch_size=batch_size, parse_phrases=False)
    model.require_global_embeddings("an image search index")
    store = open_feature_store(*read_from, model.model.cfg.region_feat_dim)
    ids = list(store.ids())
    known = _load_list(out / "ids.json", list) if old else []
    seen = set(known)
    dup = next((i for i in ids if i in seen), None)
    if dup is not None:
        raise FormatError(f"{features}: image id {dup!r} is already in the index {out}")
    files = _load_list(out / "files.json", dict) if old else {}
    if image_dir:
        new_files = image_files(image_dir, ids)
        if ids and not new_files:
            raise FormatError(f"{image_dir}: no image file is named after an image id of {features} "
                              f"(e.g. {ids[0]}.png)")
        files.update(new_files)
    dim = model.model.cfg.embed_dim
    total = _embed(model, store, ids, tmp / "embeddings.npy", out / "embeddings.npy" if old else None, dim,
                   batch_size=batch_size, progress=progress)
    (tmp / "ids.json").write_text(json.dumps(known + ids))
    (tmp / "files.json").write_text(json.dumps(files))
    before = (old or {}).get("coarse", {})
    limit = exact_limit if exact_limit is not None else before.get("exact_limit", EXACT_LIMIT)
    target = target_recall or before.get("target_recall", TARGET_RECALL)
    coarse = {"kind": "exact", "target_recall": target}
    if total > limit:
        coarse = write_ivf(np.load(tmp / "embeddings.npy", mmap_mode="r"), tmp / IVF_FILE,
                           old=out / IVF_FILE if old else None, target_recall=target)
    stores = (old["stores"] if old else []) + [{"features": features, "predictions": predictions,
                                                 "images": len(ids)}]
    stores[-1]["image_dir"] = str(Path(image_dir).resolve()) if image_dir else None
    if images:  # the detector its regions came from: `mvptr serve` detects uploaded images with it
        stores[-1]["detector"] = {"kind": "demo", "weights": str(Path(detector).resolve())}
    meta = {"format": FORMAT, "model": str(Path(model_dir).resolve()), "model_fingerprint": fingerprint,
            "data": old["data"] if old else to_dict(model.cfg.data), "images": total, "added": len(ids),
            "image_files": len(files), "embed_dim": dim, "stores": stores, "coarse": {**coarse, "exact_limit": limit}}
    (tmp / "index.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, out)
    return meta


class IndexStores:
    """The feature stores of an index (one per build that added images) as one mapping from
    image id to the image's regions."""

    def __init__(self, stores: list, sizes: list[int], row: dict[str, int]):
        self.stores, self.row = stores, row
        self.ends = np.cumsum(sizes).tolist()

    def __contains__(self, image_id) -> bool:
        return image_id in self.row

    def __getitem__(self, image_id) -> dict:
        return self.stores[bisect.bisect_right(self.ends, self.row[image_id])][image_id]


class SearchIndex:
    """An index ready to query. ``model_dir``: the model to encode queries with, instead of the
    one recorded in the index (e.g. the index moved); either way its files must be those the
    index was built with. ``nprobe``: lists an approximate coarse stage visits (default: the
    number chosen for the index's target recall). ``recall``: the recall@10 measured for the
    coarse stage (1 when exact; None for an nprobe other than the measured one)."""

    def __init__(self, path: str | Path, parse_phrases: bool = True, model_dir: str | Path | None = None,
                 nprobe: int | None = None):
        for what, value in (("path", path), ("model_dir", model_dir)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise WrongTypeError(f"{what}: expected a directory (str or Path), got {type(value).__name__}")
        if nprobe is not None:
            check_count(nprobe, "nprobe")
        self.path = Path(path)
        self.meta = read_meta(self.path)
        model_dir = Path(model_dir or self.meta["model"])
        check_model(self.meta, model_dir, self.path)
        self.ids = _load_list(self.path / "ids.json", list)
        self.row = {image_id: r for r, image_id in enumerate(self.ids)}
        self.files = _load_list(self.path / "files.json", dict)
        # where the image files may be (indexes built before the directories were recorded: anywhere)
        stores = self.meta["stores"]
        known = all("image_dir" in s for s in stores)
        self.image_dirs = [s["image_dir"] for s in stores if s["image_dir"]] if known else None
        emb = _load_embeddings(self.path / "embeddings.npy", len(self.ids))
        self.emb = torch.from_numpy(emb)
        coarse = self.meta["coarse"]
        ivf = self.path / IVF_FILE if coarse["kind"] == "ivf" else None
        self.coarse = CoarseIndex(emb, ivf, nprobe or coarse.get("nprobe"))
        self.recall = 1.0 if ivf is None else coarse.get("recall") if self.coarse.ivf.nprobe == coarse.get("nprobe") \
            else None
        self.model = Model.from_pretrained(model_dir, limits=index_limits(self.meta), parse_phrases=parse_phrases)
        dim = self.model.model.cfg.region_feat_dim
        stores = self.meta["stores"]
        self.store = IndexStores([open_feature_store(s["features"], s["predictions"], dim) for s in stores],
                                 [s["images"] for s in stores], self.row)

    def __repr__(self) -> str:
        return f"SearchIndex({str(self.path)!r}, {len(self.ids)} images, model={self.meta['model']!r})"

    def query(self, text: str, top: int = 10, rerank: int = 64, score: str = "itm+sim",
              timing: dict | None = None) -> list[Hit]:
        """The ``top`` images for ``text``: cosine ranking, then the best ``rerank`` (at least
        ``top``) by ``score`` ("itm" = ITM log-odds, "itm+sim" = log-odds plus cosine, "uni" =
        no re-ranking). ``timing`` receives the milliseconds of each step."""
        return self.query_batch([(text, top, rerank, score, timing)])[0]

    def query_batch(self, queries: list[tuple]) -> list[list[Hit]]:
        """:meth:`query` for several ``(text, top, rerank, score, timing)`` at once: their texts
        are encoded in one pass, the coarse stage searches them together, and every pair of a
        query and one of its candidates is re-ranked in one ITM pass (candidates shared by
        several queries are encoded once). Each gets the answer it would get alone; each
        ``timing`` gets the batch's times and its size."""
        if isinstance(queries, (str, tuple)) or not isinstance(queries, list):
            raise WrongTypeError(f"queries: expected a list of (text, top, rerank, score, timing) tuples, got "
                                 f"{type(queries).__name__}")
        for n, query in enumerate(queries):
            if not isinstance(query, (tuple, list)) or len(query) != 5:
                raise WrongTypeError(f"queries[{n}]: expected a tuple (text, top, rerank, score, timing)")
            text, top, rerank, score, timing = query
            if not check_text(text, "text").strip():
                raise ConfigError("text: an empty query; give a sentence to search for")
            check_count(top, "top")
            check_count(rerank, "rerank", 0)
            if not isinstance(score, str) or score not in ("itm", "itm+sim", "uni"):
                raise ConfigError(f"score: unknown score {score!r} (expected itm, itm+sim or uni)")
            if timing is not None and not isinstance(timing, dict):
                raise WrongTypeError(f"timing: expected a dict to fill, or None, got {type(timing).__name__}")
        timings = [{} if q[4] is None else q[4] for q in queries]
        live = [j for j, q in enumerate(queries) if self.ids and q[1] >= 1]
        hits: list[list[Hit]] = [[] for _ in queries]
        if not live:
            return hits
        t = time.perf_counter()
        texts = self.model.encode_texts([queries[j][0] for j in live])
        t = _lap(timings, "encode_ms", t)
        need = [max(queries[j][1], queries[j][2] if queries[j][3] != "uni" else 0) for j in live]
        sims, rows = self.coarse.search(texts.emb.float().cpu().numpy(), max(need))
        cands, coarse = [], []
        for n, k in enumerate(need):
            found = rows[n][:k] >= 0
            cands.append(torch.from_numpy(rows[n][:k][found]))
            coarse.append(torch.from_numpy(sims[n][:k][found]))
        t = _lap(timings, "coarse_ms", t)
        ranked = list(coarse)
        pairs = [(n, c) for n, j in enumerate(live) if queries[j][3] != "uni" and queries[j][2] > 0
                 for c in cands[n].tolist()]
        if pairs:
            unique = sorted({c for _, c in pairs})
            at = {c: p for p, c in enumerate(unique)}
            images = self.model.encode_images([self.store[self.ids[c]] for c in unique])
            index = torch.tensor([[at[c], n] for n, c in pairs], dtype=torch.long)
            itm = itm_scores(self.model.model, texts, images, index, self.model.batch_size, progress=False)
            start = 0
            for n, j in enumerate(live):
                if queries[j][3] == "uni" or queries[j][2] <= 0:
                    continue
                k = len(cands[n])
                ranked[n] = itm[start : start + k] + (coarse[n] if queries[j][3] == "itm+sim" else 0)
                start += k
            _lap([timings[j] for j in live if queries[j][3] != "uni" and queries[j][2] > 0], "rerank_ms", t)
        for n, j in enumerate(live):
            timings[j]["batch"] = len(queries)
            order = ranked[n].argsort(descending=True, stable=True)[: queries[j][1]]
            hits[j] = [Hit(self.ids[int(cands[n][o])], float(ranked[n][o]), float(coarse[n][o])) for o in order]
        return hits


def _lap(timings: list[dict], name: str, since: float) -> float:
    now = time.perf_counter()
    for timing in timings:
        timing[name] = round(1000 * (now - since), 2)
    return now
