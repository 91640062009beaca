"""The coarse stage of search: the images whose global embeddings have the largest inner
product with a query's, read from the embeddings memory-mapped from the index directory.

Up to ``exact_limit`` images the search is exact: faiss's brute-force inner product, straight
from the memory map (nothing is copied into an index). Above it, an inverted-file index (faiss
IVF with flat lists, spherical k-means on a sample) visits only the ``nprobe`` lists whose
centroids are nearest the query; its file is memory-mapped too. How many lists is chosen
when the index is written, by measured recall: a sample of the index's own embeddings
(``RECALL_QUERIES``) is searched both ways, and ``nprobe`` doubles from 1 until recall@10
against exact search reaches a target (``TARGET_RECALL``; every list for a target of 1).
Recall against exact search and latency at 1M images: docs/PERFORMANCE.md
(``benchmarks/faiss_coarse.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from ..core.errors import ConfigError, FormatError

EXACT_LIMIT = 100_000  # images searched exactly; an IVF index above
PROBE_SHARE = 8  # an index without a measured nprobe visits 1/8 of the IVF lists
TARGET_RECALL = 0.95  # recall@10 against exact search that the chosen nprobe reaches on the sample
RECALL_QUERIES = 200  # embeddings of the index searched to measure its recall
RECALL_K = 10
IVF_FILE = "coarse.faiss"
TRAIN_PER_LIST = 64  # k-means sample per list (faiss warns below 39)
CHUNK = 65536  # rows added to the IVF index at a time, so a memory map is never read whole


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists (a query then scans about nprobe sqrt(n) vectors), and never fewer
    than 39 training points per list."""
    return max(1, min(int(math.sqrt(n)), n // 39))


def train_ivf(emb: np.ndarray, nlist: int | None = None, seed: int = 0) -> faiss.IndexIVFFlat:
    """An empty IVF index whose centroids are k-means centroids of a sample of ``emb``."""
    n, dim = emb.shape
    nlist = nlist or ivf_lists(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # the embeddings are unit vectors: so are the centroids
    index.cp.seed = seed
    take = min(n, TRAIN_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(n, take, replace=False))
    index.train(np.ascontiguousarray(emb[rows], dtype=np.float32))
    return index


def add_rows(index: faiss.Index, emb: np.ndarray, start: int = 0) -> None:
    """Add ``emb[start:]`` to ``index`` (their ids are their row numbers)."""
    for s in range(start, len(emb), CHUNK):
        index.add(np.ascontiguousarray(emb[s : s + CHUNK], dtype=np.float32))


def check_target(target: float) -> float:
    """A recall target: a number above 0, at most 1."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ConfigError(f"target recall {target!r}: expected a number above 0 and at most 1")
    return float(target)


def sample_rows(n: int, size: int = RECALL_QUERIES, seed: int = 0) -> np.ndarray:
    """The rows whose embeddings measure an index's recall (sorted, at most ``n``)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))


def recall_at(index: faiss.Index, queries: np.ndarray, exact_rows: np.ndarray, nprobe: int) -> float:
    """Recall@k of ``index`` visiting ``nprobe`` lists: the share of ``exact_rows`` (queries, k),
    the exact top k of each query, that it returns in its own top k."""
    index.nprobe = nprobe
    rows = index.search(queries, exact_rows.shape[1])[1]
    found = sum(len(np.intersect1d(r[r >= 0], e)) for r, e in zip(rows, exact_rows))
    return found / exact_rows.size


def choose_nprobe(index: faiss.Index, emb: np.ndarray, target: float = TARGET_RECALL,
                  queries: int = RECALL_QUERIES, seed: int = 0) -> dict:
    """The fewest lists (1, 2, 4 ... nlist) at which ``index`` finds ``target`` of the exact
    top 10 of a sample of its own embeddings; a target of 1 takes every list (only that is
    exact whatever the sample). Returns the coarse stage's record of it."""
    target = check_target(target)
    rows = sample_rows(len(emb), queries, seed)
    q = np.ascontiguousarray(emb[rows], dtype=np.float32)
    k = min(RECALL_K, len(emb))
    exact = faiss.knn(q, emb, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    nprobe = index.nlist if target >= 1 else 1
    while True:
        recall = recall_at(index, q, exact, nprobe)
        if recall >= target or nprobe >= index.nlist:
            break
        nprobe = min(2 * nprobe, index.nlist)
    return {"nprobe": int(nprobe), "recall": round(recall, 4), "target_recall": target, "recall_at": k,
            "recall_queries": len(rows), "recall_seed": seed}


def write_ivf(emb: np.ndarray, path: Path, old: Path | None = None, nlist: int | None = None,
              target_recall: float = TARGET_RECALL) -> dict:
    """Write the IVF index of ``emb`` to ``path``: the rows past those of the index at ``old``
    are added to it (no new training), or a new index is trained on all of them. Its nprobe is
    chosen by measured recall (:func:`choose_nprobe`)."""
    check_target(target_recall)
    if old is not None and old.exists():
        index = faiss.read_index(str(old))
        add_rows(index, emb, index.ntotal)
    else:
        index = train_ivf(emb, nlist)
        add_rows(index, emb)
    chosen = choose_nprobe(index, emb, target_recall)
    faiss.write_index(index, str(path))
    return {"kind": "ivf", "nlist": int(index.nlist), **chosen}


class CoarseIndex:
    """Top-k inner products over ``emb`` (N, D) float32: exact, or through the IVF index file."""

    def __init__(self, emb: np.ndarray, ivf_file: Path | None = None, nprobe: int | None = None):
        if nprobe is not None and nprobe < 1:
            raise ConfigError(f"nprobe must be at least 1, not {nprobe}")
        self.emb = emb
        self.ivf = None
        if ivf_file is not None:
            self.ivf = faiss.read_index(str(ivf_file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            if self.ivf.ntotal != len(emb):
                raise FormatError(f"{ivf_file}: {self.ivf.ntotal} vectors for {len(emb)} embeddings; rebuild the index",
                                  "stale index")
            self.ivf.nprobe = min(nprobe or max(1, self.ivf.nlist // PROBE_SHARE), self.ivf.nlist)

    @property
    def kind(self) -> str:
        return "exact" if self.ivf is None else f"ivf (nlist {self.ivf.nlist}, nprobe {self.ivf.nprobe})"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (queries, k') with k' = min(k, N), best first. An IVF search
        can find fewer than k' images in the lists it visits: the rest are row -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.emb.shape[1])
        k = min(k, len(self.emb))
        if k < 1:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.ivf is not None:
            return self.ivf.search(queries, k)
        return faiss.knn(queries, self.emb, k, metric=faiss.METRIC_INNER_PRODUCT)
