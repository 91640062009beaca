"""Captions/s of `mvptr prepare phrases` (spaCy parse + scene-graph tuples + cache + vocabulary).

    python benchmarks/phrases.py --captions 100000 --out /tmp/bench_phrases

Generates COCO-like captions (5 per image, 8-14 words: counted, coloured and sized
objects in actions and spatial relations, from a fixed vocabulary and seed), writes them
as a Karpathy JSON with the project's writer, and times ``prepare_phrases`` from an empty
cache with 1 and 2 processes (``--n-process``), and, for comparison, with 2 processes
of spaCy's own ``nlp.pipe(n_process=2)``, which sends each parsed Doc back to the main
process and runs the scene-graph rules there. The time includes loading the spaCy
model and writing the cache and vocabulary. "Per core" is captions/s divided by the
number of processes; "captions per CPU-second" divides by the CPU time of all processes
(the main one and its exited children), which moves far less than wall time when other
programs share the cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import cpu_model  # noqa: E402  (benchmarks/ is the script's folder)
from mvptr.formats.captions import write_karpathy_json
from mvptr.text.phrases import PhraseExtractor, prepare_phrases

COUNTS = ["a", "a", "the", "two", "three", "some", "an old", "a small", "a large", "a young"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "brown", "grey", "orange", ""]
NOUNS = ["man", "woman", "dog", "cat", "horse", "car", "bus", "train", "table", "plate", "pizza", "boy", "girl",
         "bench", "surfboard", "wave", "kite", "umbrella", "bicycle", "truck", "giraffe", "elephant", "clock",
         "building", "tree", "street", "field", "beach", "kitchen", "shirt", "hat", "chair", "bowl", "cake"]
ACTIONS = ["riding", "holding", "sitting on", "standing next to", "walking on", "eating", "looking at",
           "carrying", "lying on", "playing with", "parked near", "flying over"]
PLACES = ["in a field", "on the street", "near the beach", "in a kitchen", "under a tree", "at night",
          "on a sunny day", "in front of a building", ""]


class SpacyProcesses(PhraseExtractor):
    """Extraction through spaCy's ``nlp.pipe(n_process=...)``: parsing in the workers, the
    Docs sent back, the scene-graph rules in this process."""

    def extract(self, captions, batch_size=256, n_process=1, progress=True):
        docs = self.nlp.pipe((c.strip() for c in captions), batch_size=batch_size, n_process=n_process)
        return [self.tuples(doc) for doc in docs]


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "ch")) else "s")


def _phrase(rng) -> str:
    count = COUNTS[rng.integers(len(COUNTS))]
    colour = COLOURS[rng.integers(len(COLOURS))]
    noun = NOUNS[rng.integers(len(NOUNS))]
    if count in ("two", "three", "some"):
        noun = _plural(noun)
    elif count == "a" and colour and colour[0] in "aeiou":
        count = "an"
    return " ".join(w for w in (count, colour, noun) if w)


def captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = f"{_phrase(rng)} {ACTIONS[rng.integers(len(ACTIONS))]} {_phrase(rng)}"
        place = PLACES[rng.integers(len(PLACES))]
        out.append(f"{text} {place}".strip().capitalize() + ".")
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its exited, waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--captions", type=int, default=20000)
    p.add_argument("--out", default="/tmp/bench_phrases")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-spacy-processes", action="store_true", help="skip the spaCy n_process comparison")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = captions(args.captions, args.seed)
    path = out / "captions.json"
    write_karpathy_json(path, [{"filename": f"{i}.jpg", "imgid": i, "split": "train", "sentences": texts[k:k + 5]}
                               for i, k in enumerate(range(0, len(texts), 5))])
    words = sum(len(t.split()) for t in texts) / len(texts)
    rows = []
    runs = [("prepare phrases", n, None) for n in args.processes]
    if not args.no_spacy_processes:
        runs.append(("spaCy nlp.pipe(n_process)", 2, SpacyProcesses))
    for name, n_process, extractor in runs:
        target = out / f"p{n_process}{'-spacy' if extractor else ''}"
        shutil.rmtree(target, ignore_errors=True)
        load = os.getloadavg()[0]
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        stats = prepare_phrases(path, target, min_count=5, n_process=n_process,
                                extractor=extractor() if extractor else None)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        rows.append((name, n_process, seconds, args.captions / seconds, args.captions / seconds / n_process,
                     args.captions / cpu, load, stats["phrases_per_text"]))
    print(f"\n{date.today()}, {os.cpu_count()} x {cpu_model()}, {args.captions} captions "
          f"({words:.1f} words on average)\n")
    print("| path | processes | seconds | captions/s | captions/s per core | captions per CPU-second "
          "| phrases/caption | 1-min load at start |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n_process, seconds, rate, per_core, per_cpu, load, per_text in rows:
        print(f"| {name} | {n_process} | {seconds:.1f} | {rate:.0f} | {per_core:.0f} | {per_cpu:.0f} | {per_text:.2f} "
              f"| {load:.2f} |")
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
