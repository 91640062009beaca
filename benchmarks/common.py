"""What the model benchmarks share: the machine, its measured matmul rate, synthetic batches.

Synthetic batches have the keys, shapes and dtypes of the pre-training collator's output at
a config's sizes (every sequence full length, the collator's masking rates), so a benchmark
needs no tokenizer, data set or initial weights.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import torch

from mvptr.core.config import Config, load_config
from mvptr.core.runtime import cpu_model
from mvptr.model.modeling import MVPTR
from mvptr.text.tokenizer import IGNORE

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> dict:
    info = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


class MatmulProbe:
    """The FLOP/s of one large square matrix product at a precision: the machine's ceiling.

    Kept as an object so it can be measured again between the timed steps of a benchmark:
    on a shared machine the ceiling itself moves from second to second, and a ratio is only
    meaningful between two things measured at the same moment.
    """

    def __init__(self, device: str, precision: str, n: int = 0):
        self.device = device
        n = n or (8192 if device.startswith("cuda") else 2048)
        self.flops = 2 * n**3
        dtype = DTYPES[precision]
        self.a = torch.randn(n, n, device=device).to(dtype)
        self.b = torch.randn(n, n, device=device).to(dtype)
        # into one output: a fresh 16 MiB result each time would also time the allocator
        self.c = torch.empty_like(self.a)
        for _ in range(3):
            torch.matmul(self.a, self.b, out=self.c)
        sync(device)

    def rate(self, seconds: float = 2.0) -> float:
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.matmul(self.a, self.b, out=self.c)
            reps += 1
            if self.device.startswith("cuda") and reps % 10:
                continue
            sync(self.device)
        sync(self.device)
        return self.flops * reps / (time.perf_counter() - t0)


def matmul_peak(device: str, precision: str, n: int = 0, seconds: float = 2.0) -> float:
    """Measured FLOP/s of one large square matrix product at ``precision`` (the ceiling)."""
    return MatmulProbe(device, precision, n).rate(seconds)


def write_result(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))


def bench_config(preset: str, overrides: list[str] = ()) -> Config:
    cfg = load_config(preset, ["init.source=random", *overrides])
    return cfg


def random_model(cfg: Config, num_phrases: int = 2000, num_tags: int = 1600, device: str = "cpu") -> MVPTR:
    """A randomly initialised model with the paper's vocabulary sizes (VinVL's 1,594 tags)."""
    g = torch.Generator().manual_seed(0)
    tag_pieces = torch.randint(1000, cfg.model.vocab_size, (num_tags, 3), generator=g)
    return MVPTR(cfg.model, num_phrases, tag_pieces).to(device)


def synthetic_batch(cfg: Config, model: MVPTR, batch_size: int, device: str, seed: int = 0) -> dict:
    """Drawn on ``device``, so that making inputs costs the benchmark next to nothing."""
    d, m = cfg.data, cfg.model
    o = cfg.objectives
    g = torch.Generator(device).manual_seed(seed)
    b, n, p, k, r = batch_size, d.max_tokens, d.max_phrases, d.max_tags, d.max_regions
    kw = {"device": device, "generator": g}

    def masked(shape, prob, high):
        labels = torch.randint(0, high, shape, **kw)
        return labels.masked_fill(torch.rand(shape, **kw) >= prob, IGNORE)

    def ones(*shape):
        return torch.ones(*shape, dtype=torch.bool, device=device)

    input_ids = torch.randint(1000, m.vocab_size, (b, n), **kw)
    input_ids[:, 0], input_ids[:, -1] = 101, 102
    mlm_labels = masked((b, n), o.mlm_mask_prob, m.vocab_size)
    mlm_labels[:, 0] = mlm_labels[:, -1] = IGNORE
    phrase_ids = m.vocab_size + torch.randint(0, model.num_phrases, (b, p), **kw)
    phrase_labels = masked((b, p), o.phrase_mask_prob, model.num_phrases)
    # as the collator does: a masked phrase reads [MASK]; in the MLM pass, so does a phrase
    # holding a masked word (about one in ten here)
    phrase_ids = phrase_ids.masked_fill(phrase_labels != IGNORE, 103)
    mlm_phrase_ids = phrase_ids.masked_fill(torch.rand((b, p), **kw) < 0.1, 103)
    return {
        "input_ids": input_ids,
        "word_mask": ones(b, n),
        "mlm_input_ids": torch.where(mlm_labels != IGNORE, torch.full_like(input_ids, 103), input_ids),
        "mlm_labels": mlm_labels,
        "phrase_ids": phrase_ids,
        "mlm_phrase_ids": mlm_phrase_ids,
        "phrase_mask": ones(b, p),
        "phrase_labels": phrase_labels,
        "phrase_masked": phrase_ids == 103,
        "tag_pieces": model.tag_pieces[torch.randint(0, len(model.tag_pieces), (b, k), **kw)],
        "tag_mask": ones(b, k),
        "tag_labels": masked((b, k), o.tag_mask_prob, len(model.tag_pieces)),
        "region_feats": torch.randn(b, r, m.region_feat_dim, **kw),
        "region_mask": ones(b, r),
        "boxes": torch.rand(b, r, 4, **kw),
        "image_size": torch.full((b, 2), 600.0, device=device),
        "image_index": torch.arange(b, device=device),
    }
