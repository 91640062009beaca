"""Pre-training throughput against the machine's measured matmul rate, and memory per sample.

    python benchmarks/pretrain_throughput.py --config demo --device cpu --precision fp32
    python benchmarks/pretrain_throughput.py --config base --device cuda --precision bf16

Times full optimizer steps (the trainer's autocast, recipe losses, backward, clipping and
AdamW) on a synthetic batch already on the device, so the number is the model's, not the
data loader's (benchmarks/feature_loader.py measures that). The model FLOPs of a step are
counted by torch.utils.flop_counter over one forward and backward pass: every matrix
product and attention of the three encoders, the extra multimodal passes (ITM negatives,
the MLM pass, WPG), and the vocabulary-sized heads. Achieved FLOP/s divided by the FLOP/s
of a large matrix product at the same precision, measured in the same run, is the ratio
reported. Memory per sample is the difference in peak memory between two batch sizes
divided by their difference, from the CUDA allocator's peak (a CPU process's peak RSS is
dominated by allocator caching and model set-up, so it is not reported).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_config,
    machine,
    matmul_peak,
    random_model,
    sync,
    synthetic_batch,
    write_result,
)
from mvptr.precision import autocast  # noqa: E402
from mvptr.train.recipes import pretraining_recipe  # noqa: E402
from mvptr.train.trainer import adamw, only_trainable, param_groups  # noqa: E402


def make_step(cfg, model, stage, batch, device, precision):
    recipe = pretraining_recipe(stage.name, list(stage.objectives), cfg.objectives)
    optimizer = adamw(param_groups(model, recipe.trainable, stage.weight_decay), lr=1e-5)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator(device)

    def step(count: FlopCounterMode | None = None):
        gen.manual_seed(0)
        with count or contextlib.nullcontext():
            with autocast(device, precision):
                losses = recipe.loss(model, batch, gen)
            sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return recipe, step


def measure(cfg, stage, batch_size, device, precision, steps, checkpointing=False):
    cfg.model.activation_checkpointing = checkpointing
    model = random_model(cfg, device=device).train()
    batch = synthetic_batch(cfg, model, batch_size, device)
    recipe, step = make_step(cfg, model, stage, batch, device, precision)
    with only_trainable(model, recipe.trainable):
        step()  # warm-up: allocator, kernels
        counter = FlopCounterMode(display=False)
        step(counter)
        flops = counter.get_total_flops()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        seconds = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"flops_per_step": flops, "seconds_per_step": seconds, "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=0, help="default: the stage's batch on CPU (demo), 128 on GPU")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--stages", default="stage1,stage2")
    p.add_argument("--memory", action="store_true",
                   help="also measure memory per sample on CUDA (the allocator's peak at half the batch)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    cfg = bench_config(args.config)

    batch_size = args.batch_size or (128 if args.device.startswith("cuda") else cfg.stage1.batch_size)
    peak = matmul_peak(args.device, args.precision)
    result = {"machine": machine(args.device), "config": args.config, "precision": args.precision,
              "batch_size": batch_size, "matmul_peak_flops": peak, "stages": {}}
    for name in args.stages.split(","):
        stage = getattr(cfg, name)
        r = measure(cfg, stage, batch_size, args.device, args.precision, args.steps)
        achieved = r["flops_per_step"] / r["seconds_per_step"]
        row = {
            "objectives": list(stage.objectives),
            "samples_per_s": batch_size / r["seconds_per_step"],
            "gflop_per_sample": r["flops_per_step"] / batch_size / 1e9,
            "achieved_flops": achieved,
            "fraction_of_matmul_peak": achieved / peak,
        }
        if args.memory and args.device.startswith("cuda"):
            half = batch_size // 2
            for ckpt in (False, True):
                big = measure(cfg, stage, batch_size, args.device, args.precision, 1, ckpt)["peak_bytes"]
                small = measure(cfg, stage, half, args.device, args.precision, 1, ckpt)["peak_bytes"]
                key = "mib_per_sample_checkpointed" if ckpt else "mib_per_sample"
                row[key] = (big - small) / (batch_size - half) / 2**20
        result["stages"][name] = row

    print(f"\n{args.config} config, {args.precision}, batch {batch_size}, {result['machine']}")
    print(f"measured matmul peak: {peak / 1e12:.3f} TFLOP/s")
    print("| stage | samples/s | GFLOP/sample | achieved TFLOP/s | of matmul peak | MiB/sample "
          "| MiB/sample (act. ckpt) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in result["stages"].items():
        mem = " | ".join(f"{row.get(k, float('nan')):.1f}" for k in ("mib_per_sample", "mib_per_sample_checkpointed"))
        print(f"| {name} | {row['samples_per_s']:.1f} | {row['gflop_per_sample']:.2f} | "
              f"{row['achieved_flops'] / 1e12:.3f} | {100 * row['fraction_of_matmul_peak']:.1f}% | {mem} |")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
