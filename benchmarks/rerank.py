"""Coarse-to-fine retrieval evaluation: ours against a one-query-at-a-time re-ranker.

    python benchmarks/rerank.py --config base --device cuda --precision bf16 --images 5000
    python benchmarks/rerank.py --config demo --device cpu --images 500 --k-c 16 --k-i 8

Ours (mvptr.eval.retrieval.evaluate_retrieval) takes the union of every image's top k_c
captions and every caption's top k_i images, scores each pair once, in batches that mix
queries, from the cached uni-modal outputs. The baseline does what ALBEF's evaluation
loop does: for each query in turn, one multimodal pass over its k candidates (also from
cached uni-modal outputs). Both are timed on the same randomly initialised model and
synthetic inputs at the config's sizes (5 captions per image); the baseline on a subset
of queries, as pairs/s. On a smaller problem both score every query in fp32 and their
recalls are compared, so the speed-up is at equal recall.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_config, machine, random_model, sync, synthetic_batch, write_result  # noqa: E402
from mvptr.core.precision import autocast
from mvptr.eval.retrieval import (  # noqa: E402
    EncodedSet,
    candidates,
    encode_images,
    encode_texts,
    evaluate_retrieval,
    reranked_recall,
)


def encode(model, cfg, n_images, per_image, device, precision, batch=512):
    def batches(n, seed):
        for start in range(0, n, batch):
            yield synthetic_batch(cfg, model, min(batch, n - start), device, seed=seed + start)

    with autocast(device, precision):
        texts = encode_texts(model, batches(n_images * per_image, 0), device)
        images = encode_images(model, batches(n_images, 10**6), device)
    return texts, images


@torch.no_grad()
def one_query_at_a_time(model, texts: EncodedSet, images: EncodedSet, sim, k_c, k_i, image_queries, text_queries,
                        precision):
    """Per-query re-ranking as in ALBEF's evaluation: {(image, text): ITM log-odds}."""
    device = texts.hidden.device
    scores = {}
    with autocast(str(device), precision):
        for i in image_queries:
            cand = sim[i].topk(k_c).indices.to(device)
            fused = model.fuse(texts.hidden[cand], texts.mask[cand], images.hidden[i].expand(k_c, -1, -1),
                               images.mask[i].expand(k_c, -1))
            logit = model.itm_logits(fused).float()
            for t, s in zip(cand.tolist(), (logit[:, 1] - logit[:, 0]).tolist()):
                scores[(i, t)] = s
        for t in text_queries:
            cand = sim[:, t].topk(k_i).indices.to(device)
            fused = model.fuse(texts.hidden[t].expand(k_i, -1, -1), texts.mask[t].expand(k_i, -1),
                               images.hidden[cand], images.mask[cand])
            logit = model.itm_logits(fused).float()
            for i, s in zip(cand.tolist(), (logit[:, 1] - logit[:, 0]).tolist()):
                scores[(i, t)] = s
    return scores


@torch.no_grad()
def flops_per_pair(model, texts: EncodedSet, images: EncodedSet, summary_only: bool, pairs: int = 8) -> float:
    """Model FLOPs of scoring one pair: the whole last layer, or its [CLS] row alone."""
    counter = FlopCounterMode(display=False)
    with counter:
        fused = model.fuse(texts.hidden[:pairs], texts.mask[:pairs], images.hidden[:pairs], images.mask[:pairs],
                           summary_only=summary_only)
        model.itm_logits(fused)
    return counter.get_total_flops() / pairs


def baseline_recall(scores, sim, text_image, k_c, k_i):
    positives = text_image[None, :] == torch.arange(len(sim))[:, None]
    fine = torch.full_like(sim, float("nan"))
    for (i, t), s in scores.items():
        fine[i, t] = s
    return reranked_recall(sim, fine, *candidates(sim, k_c, k_i), positives)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--per-image", type=int, default=5)
    p.add_argument("--k-c", type=int, default=128)
    p.add_argument("--k-i", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=0, help="pairs per re-ranking pass (default 1024 GPU, 128 CPU)")
    p.add_argument("--baseline-queries", type=int, default=200, help="image and caption queries timed for the baseline")
    p.add_argument("--check-images", type=int, default=100, help="problem size of the equal-recall check")
    p.add_argument("--compile", default="none", help="model.compile: torch.compile each layer with this backend")
    p.add_argument("--out")
    args = p.parse_args()
    cfg = bench_config(args.config, [f"model.compile={args.compile}"])
    dev = args.device
    batch_size = args.batch_size or (1024 if dev.startswith("cuda") else 128)
    model = random_model(cfg, device=dev).eval()

    # equal recall: both re-rankers score every query of a small problem in fp32
    texts, images = encode(model, cfg, args.check_images, args.per_image, dev, "fp32")
    text_image = torch.arange(args.check_images).repeat_interleave(args.per_image)
    sim = (images.emb @ texts.emb.t()).float().cpu()
    k_c, k_i = min(args.k_c, sim.shape[1]), min(args.k_i, sim.shape[0])
    ours_small = evaluate_retrieval(model, texts, images, text_image, k_c, k_i, batch_size=batch_size, progress=False)
    base_scores = one_query_at_a_time(model, texts, images, sim, k_c, k_i, range(sim.shape[0]), range(sim.shape[1]),
                                      "fp32")
    base_small = baseline_recall(base_scores, sim, text_image, k_c, k_i)
    flops = {"whole_last_layer": flops_per_pair(model, texts, images, False),
             "summary_only": flops_per_pair(model, texts, images, True)}

    # the full-size evaluation, timed end to end (uni-modal encoding included)
    sync(dev)
    t0 = time.perf_counter()
    texts, images = encode(model, cfg, args.images, args.per_image, dev, args.precision)
    sync(dev)
    t_encode = time.perf_counter() - t0
    text_image = torch.arange(args.images).repeat_interleave(args.per_image)
    t1 = time.perf_counter()
    ours = evaluate_retrieval(model, texts, images, text_image, args.k_c, args.k_i, batch_size=batch_size,
                              progress=False,
                              precision=args.precision)
    sync(dev)
    t_rerank = time.perf_counter() - t1

    sim = (images.emb @ texts.emb.t()).float().cpu()
    q_img = range(min(args.baseline_queries, sim.shape[0]))
    q_txt = range(min(args.baseline_queries, sim.shape[1]))
    sync(dev)
    t2 = time.perf_counter()
    one_query_at_a_time(model, texts, images, sim, args.k_c, args.k_i, q_img, q_txt, args.precision)
    sync(dev)
    t_base = time.perf_counter() - t2
    base_pairs = len(q_img) * args.k_c + len(q_txt) * args.k_i

    result = {
        "machine": machine(dev), "config": args.config, "precision": args.precision, "compile": args.compile,
        "images": args.images,
        "captions": args.images * args.per_image, "k_c": args.k_c, "k_i": args.k_i, "batch_size": batch_size,
        "pairs_scored": ours["pairs_scored"], "seconds_encode": t_encode, "seconds_rerank": t_rerank,
        "seconds_total": t_encode + t_rerank, "ours_pairs_per_s": ours["pairs_scored"] / t_rerank,
        "baseline_pairs_per_s": base_pairs / t_base, "baseline_pairs_timed": base_pairs,
        "gflop_per_pair": {k: v / 1e9 for k, v in flops.items()},
        "equal_recall_check": {"images": args.check_images, "ours": ours_small["rerank"], "baseline": base_small,
                               "equal": ours_small["rerank"] == base_small},
    }
    result["speedup"] = result["ours_pairs_per_s"] / result["baseline_pairs_per_s"]
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    print(f"\n{args.config} config, {args.precision}, compile {args.compile}, "
          f"{args.images} images x {args.per_image} captions, "
          f"k_c={args.k_c}, k_i={args.k_i}: {ours['pairs_scored']} pairs in {t_rerank:.1f} s "
          f"(+{t_encode:.1f} s encoding); ours {result['ours_pairs_per_s']:.0f} pairs/s, one query at a time "
          f"{result['baseline_pairs_per_s']:.0f} pairs/s: {result['speedup']:.1f}x; "
          f"equal recall on {args.check_images} images: {result['equal_recall_check']['equal']}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
