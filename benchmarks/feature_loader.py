"""Samples/s of the pre-training data path reading VinVL TSV rows vs the memmap float16 store.

    python benchmarks/feature_loader.py --images 20000 --out /tmp/bench_store
    python benchmarks/feature_loader.py --fill-only

Writes a synthetic VinVL pair at the paper's sizes (50 regions x 2054 random floats per
image, 30 class names) to OUT/vinvl with the project's writers, reusing it when present,
converts it to the store OUT/store, and times ``PairDataset.__getitem__`` + ``Collator``
(35 tokens, 5 phrases, 20 tags, 50 regions, stage-2 masking) from each store over the
same random-order samples, with 0 and 2 DataLoader workers. Every sample is read once
before timing, so both stores are measured from the page cache, not the disk. Each
process uses one torch thread, so "per core" is samples/s over max(1, workers). "CPU
us/sample" adds the CPU time of the main process and of the workers (from their start
to their exit), so it moves far less than samples/s when other programs share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import cpu_model  # noqa: E402  (benchmarks/ is the script's folder)
from mvptr.data.collate import FIRST_WORD_ID, CollateSettings, Collator, Masking
from mvptr.data.pretrain import ImageSource, PairDataset
from mvptr.formats.captions import CaptionRecord
from mvptr.formats.vinvl import write_vinvl_features, write_vinvl_predictions
from mvptr.text.tokenizer import WordPieces, load_tokenizer
from mvptr.vision.store_convert import convert_vinvl_to_memmap

REGIONS, DIM, TOKENS, PHRASES, TAGS = 50, 2054, 35, 5, 20
NUM_PHRASES, VOCAB = 1000, 30522
CLASSES = ["person", "man", "woman", "shirt", "tree", "building", "window", "sky", "car", "table",
           "chair", "dog", "cat", "grass", "road", "sign", "hand", "head", "plate", "wall",
           "water", "cloud", "traffic light", "surfboard", "bus", "train", "horse", "pizza", "cup", "bench"]


def write_synthetic(out: Path, n: int, seed: int) -> bool:
    """Write the pair unless the same one is already there; True when written."""
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text()) == {"images": n, "seed": seed}:
        return False
    out.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:07d}" for i in range(n)]

    def features():
        rng = np.random.default_rng(seed)
        for image_id in tqdm(ids, desc="write features.tsv", unit="img"):
            yield image_id, rng.random((REGIONS, DIM), dtype=np.float32)

    def predictions():
        rng = np.random.default_rng(seed + 1)
        for image_id in ids:
            w, h = (int(v) for v in rng.integers(320, 641, 2))
            corner = rng.random((REGIONS, 2)) * [w / 2, h / 2]
            rects = np.round(np.concatenate([corner, corner + rng.random((REGIONS, 2)) * [w / 2, h / 2]], 1), 2)
            objects = [{"rect": r, "class": CLASSES[c], "conf": p} for r, c, p in zip(
                rects.tolist(), rng.integers(0, len(CLASSES), REGIONS).tolist(),
                np.round(rng.random(REGIONS), 4).tolist())]
            yield image_id, {"image_h": h, "image_w": w, "num_boxes": REGIONS, "objects": objects}

    write_vinvl_features(out / "features.tsv", features())
    write_vinvl_predictions(out / "predictions.tsv", predictions())
    done.write_text(json.dumps({"images": n, "seed": seed}))
    return True


def pair_dataset(images: ImageSource, n: int, seed: int) -> PairDataset:
    """One caption per image, with random word pieces and phrase ids of the paper's lengths."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:07d}" for i in range(n)]
    tok = load_tokenizer()
    tokens = [[tok.cls_token_id, *rng.integers(FIRST_WORD_ID, VOCAB, TOKENS - 2).tolist(), tok.sep_token_id]
              for _ in ids]
    phrases = [rng.integers(0, NUM_PHRASES, PHRASES).tolist() for _ in ids]
    return PairDataset([CaptionRecord(i, "", "train", 0) for i in ids], images, tokens, phrases)


def collator(seed: int) -> Collator:
    return Collator(WordPieces(load_tokenizer(), TOKENS), CLASSES, NUM_PHRASES, VOCAB,
                    CollateSettings(masking=Masking(words=0.15, phrases=0.25, tags=0.25)),
                    generator=torch.Generator().manual_seed(seed))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its exited, waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def samples_per_second(ds: PairDataset, order: list[int], workers: int, batch_size: int,
                       seed: int) -> tuple[float, float]:
    """(samples/s after the first batch, CPU us per sample of all processes over all batches)."""
    cpu0 = _cpu_seconds()
    loader = DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collator(seed))
    batches = iter(loader)
    next(batches)  # worker start-up and the first batch are not timed
    start, n = time.perf_counter(), 0
    for batch in batches:
        n += len(batch["region_feats"])
    rate = n / (time.perf_counter() - start)
    del batches  # the workers exit and are waited for, so their CPU time is counted
    return rate, (_cpu_seconds() - cpu0) / len(order) * 1e6


def split_times(ds: PairDataset, order: list[int], batch_size: int, seed: int) -> tuple[float, float]:
    """Microseconds per sample in __getitem__ and in the collator, in this process."""
    collate, read, coll = collator(seed), 0.0, 0.0
    for s in range(0, len(order), batch_size):
        t0 = time.perf_counter()
        items = [ds[i] for i in order[s:s + batch_size]]
        t1 = time.perf_counter()
        collate(items)
        read, coll = read + t1 - t0, coll + time.perf_counter() - t1
    return read / len(order) * 1e6, coll / len(order) * 1e6


def fill_times(batch_size: int, repeats: int = 20) -> None:
    """Milliseconds to fill one batch of region features (batch x 50 x 2054 float32) into fresh
    private memory, fresh shared memory (what a worker's collator does), and private memory
    then copied to shared memory (what the DataLoader did with a private batch)."""
    shape = (batch_size, REGIONS, DIM)
    src = np.random.default_rng(0).random(shape, dtype=np.float32)

    def private():
        t = torch.empty(shape)
        t.numpy()[:] = src
        return t

    def shared():
        storage = torch.empty(0)._typed_storage()._new_shared(int(np.prod(shape)))
        t = torch.empty(0).new(storage).view(shape)
        t.numpy()[:] = src
        return t

    def private_then_shared():
        return private().share_memory_()

    print(f"{date.today()}, {os.cpu_count()} x {cpu_model()}, 1-min load {os.getloadavg()[0]:.2f}; "
          f"median of {repeats}, ms per batch of {batch_size}")
    for fill in (private, shared, private_then_shared):
        fill()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            batch = fill()
            times.append(time.perf_counter() - t0)
            del batch
        print(f"{fill.__name__}: {np.median(times) * 1e3:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--out", default="/tmp/bench_store")
    p.add_argument("--samples", type=int, default=2560, help="random-order samples timed per configuration")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fill-only", action="store_true", help="only time filling a batch into private/shared memory")
    args = p.parse_args()
    torch.set_num_threads(1)  # the data path is what is measured; one thread per process
    if args.fill_only:
        fill_times(args.batch_size)
        return
    out = Path(args.out)
    if write_synthetic(out / "vinvl", args.images, args.seed) and (out / "store").exists():
        shutil.rmtree(out / "store")  # converted from an earlier pair
    if not (out / "store" / "meta.json").is_file():
        print(json.dumps(convert_vinvl_to_memmap(out / "vinvl" / "features.tsv", out / "vinvl" / "predictions.tsv",
                                                 out / "store", feat_dim=DIM)))
    stores = {
        "TSV": ImageSource(str(out / "vinvl" / "features.tsv"), str(out / "vinvl" / "predictions.tsv"),
                           DIM, REGIONS, TAGS),
        "memmap fp16": ImageSource(str(out / "store"), "", DIM, REGIONS, TAGS),
    }
    order = torch.randperm(args.images, generator=torch.Generator().manual_seed(args.seed))[:args.samples].tolist()
    rows = []
    for name, images in stores.items():
        ds = pair_dataset(images, args.images, args.seed)
        for i in order:  # page cache warm-up: every timed run reads from memory, not the disk
            ds[i]
        read_us, collate_us = split_times(ds, order, args.batch_size, args.seed)
        for workers in args.workers:
            rate, cpu_us = samples_per_second(ds, order, workers, args.batch_size, args.seed)
            rows.append((name, workers, rate, rate / max(1, workers), read_us, collate_us, cpu_us))
    print(f"\n{date.today()}, {os.cpu_count()} x {cpu_model()}, {args.images} images, {args.samples} samples "
          f"per row, batch {args.batch_size}, torch threads 1, 1-min load average at the end "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| store | workers | samples/s | samples/s per core | getitem us/sample | collate us/sample "
          "| CPU us/sample |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, workers, rate, per_core, read_us, collate_us, cpu_us in rows:
        print(f"| {name} | {workers} | {rate:.0f} | {per_core:.0f} | {read_us:.0f} | {collate_us:.0f} | {cpu_us:.0f} |")
    per_core = {(name, workers): pc for name, workers, _, pc, _, _, _ in rows}
    cpu = {(name, workers): c for name, workers, _, _, _, _, c in rows}
    print()
    for workers in args.workers:
        ratio = per_core[("memmap fp16", workers)] / per_core[("TSV", workers)]
        cpu_ratio = cpu[("TSV", workers)] / cpu[("memmap fp16", workers)]
        print(f"memmap/TSV samples/s per core, {workers} workers: {ratio:.1f}x; "
              f"TSV/memmap CPU time per sample: {cpu_ratio:.1f}x")


if __name__ == "__main__":
    main()
