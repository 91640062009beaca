"""The coarse stage of search at 1M images: recall@10 of the IVF index against exact search,
and the latency of one query, both read from memory-mapped embeddings as `mvptr serve` does.

    python benchmarks/faiss_coarse.py --n 1000000 --dim 256 --out /tmp/faiss_bench

Synthetic unit vectors, written to ``embeddings.npy`` in ``--out`` and memory-mapped, in
two distributions: "clustered" (each a random one of ``--clusters`` unit centres plus
Gaussian noise, so a vector's cosine to its centre is about 0.7 -- collections of images
are clustered like this) and "uniform" (uniformly on the sphere: no structure, the worst
case for any index that prunes). Queries come from the same distribution, drawn apart from
the collection. Recall@10: the share of the exact top 10 that the IVF search returns.
The IVF index chooses its nprobe as `search build` does (``--target-recall``, measured on a
sample of its own embeddings); the run reports that choice and measures it, and the old
default share of 1/8 of the lists, with the others. Latency: one query at a time (as a
request does), percentiles over ``--latency-queries``. Memory: the process's peak resident
set, which counts the mapped pages it touched.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from mvptr.app.coarse import IVF_FILE, PROBE_SHARE, TARGET_RECALL, CoarseIndex, ivf_lists, write_ivf


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sample(rng, n: int, dim: int, centres: np.ndarray | None) -> np.ndarray:
    if centres is None:
        return unit(rng.standard_normal((n, dim), dtype=np.float32))
    # noise of norm about 1: cosine to the centre about 1/sqrt(2)
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return unit(centres[rng.integers(len(centres), size=n)] + noise)


def write_embeddings(path: Path, n: int, dim: int, centres, seed: int, chunk: int = 100_000) -> np.memmap:
    rng = np.random.default_rng(seed)
    emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, chunk):
        emb[s : s + chunk] = sample(rng, min(chunk, n - s), dim, centres)
    emb.flush()
    del emb
    return np.load(path, mmap_mode="r")


def latency_ms(index: CoarseIndex, queries: np.ndarray, k: int) -> dict:
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append(1000 * (time.perf_counter() - t))
    p50, p95 = np.percentile(times, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3)}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def run(kind: str, args, out: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((args.clusters, args.dim), dtype=np.float32)) if kind == "clustered" else None
    t = time.perf_counter()
    emb = write_embeddings(out / "embeddings.npy", args.n, args.dim, centres, args.seed + 1)
    queries = sample(np.random.default_rng(args.seed + 2), args.queries, args.dim, centres)
    row = {"distribution": kind, "write_s": round(time.perf_counter() - t, 1)}
    exact = CoarseIndex(emb)
    t = time.perf_counter()
    truth = exact.search(queries, args.k)[1]
    row["exact_batch_ms_per_query"] = round(1000 * (time.perf_counter() - t) / len(queries), 3)
    row["exact"] = latency_ms(exact, queries[: args.latency_queries], args.k)
    t = time.perf_counter()
    meta = write_ivf(emb, out / IVF_FILE, nlist=args.nlist, target_recall=args.target_recall)
    row["ivf_build_s"] = round(time.perf_counter() - t, 1)  # training, adding, choosing nprobe
    row["nlist"] = meta["nlist"]
    # the nprobe chosen for the target, and the recall measured on the index's own sample
    row["chosen"] = {k: meta[k] for k in ("nprobe", "recall", "target_recall", "recall_queries")}
    row["ivf"] = []
    share = max(1, meta["nlist"] // PROBE_SHARE)
    for nprobe in sorted(set(args.nprobe) | {meta["nprobe"], share}):
        ivf = CoarseIndex(emb, out / IVF_FILE, nprobe=nprobe)
        found = ivf.search(queries, args.k)[1]
        row["ivf"].append({"nprobe": nprobe, "chosen": nprobe == meta["nprobe"], "share_1/8": nprobe == share,
                           f"recall@{args.k}": round(recall(found, truth), 4),
                           **latency_ms(ivf, queries[: args.latency_queries], args.k)})
        print(json.dumps({kind: row["ivf"][-1]}), flush=True)
    (out / "embeddings.npy").unlink()
    (out / IVF_FILE).unlink()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256, help="embedding width (the demo config's embed_dim)")
    p.add_argument("--clusters", type=int, default=10_000)
    p.add_argument("--nlist", type=int, help="IVF lists (default: what `search build` picks)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--target-recall", type=float, default=TARGET_RECALL,
                   help="the recall@10 `search build` chooses nprobe for (measured on the index's own sample)")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall")
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--distributions", nargs="+", default=["clustered", "uniform"], choices=["clustered", "uniform"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/faiss_bench", help="scratch directory for the embeddings and the index")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "faiss": faiss.__version__, "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
              "n": args.n, "dim": args.dim, "clusters": args.clusters, "k": args.k,
              "nlist": args.nlist or ivf_lists(args.n), "runs": []}
    for kind in args.distributions:
        result["runs"].append(run(kind, args, out))
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
