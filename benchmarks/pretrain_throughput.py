"""Pre-training throughput against the machine's measured matmul rate, and memory per sample.

    python benchmarks/pretrain_throughput.py --config demo --device cpu --precision fp32
    python benchmarks/pretrain_throughput.py --config base --device cuda --precision bf16

Times full optimizer steps (the trainer's autocast, recipe losses, backward, clipping and
AdamW) on a synthetic batch already on the device, so the number is the model's, not the
data loader's (benchmarks/feature_loader.py measures that). The model FLOPs of a step are
counted by torch.utils.flop_counter over one forward and backward pass: every matrix
product and attention of the three encoders, the extra multimodal passes (ITM negatives,
the MLM pass, WPG), and the vocabulary-sized heads. The ratio reported is achieved FLOP/s
divided by the FLOP/s of a large matrix product at the same precision: each timed step is
followed by a measurement of that product lasting as long, and the median over steps of
their ratio is reported with its quartiles (a shared machine's speed drifts within a run,
so only things measured at the same moment are compared). Memory per sample is the
difference in peak memory between two batch sizes divided by their difference, from the
CUDA allocator's peak (a CPU process's peak RSS is dominated by allocator caching and
model set-up, so it is not reported).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MatmulProbe,
    bench_config,
    machine,
    random_model,
    sync,
    synthetic_batch,
    write_result,
)
from mvptr.core.precision import autocast
from mvptr.train.recipes import pretraining_recipe  # noqa: E402
from mvptr.train.trainer import adamw, only_trainable, param_groups, reuse_freed_cpu_memory  # noqa: E402


def make_step(cfg, model, stage, batch, device, precision):
    recipe = pretraining_recipe(stage.name, list(stage.objectives), cfg.objectives)
    optimizer = adamw(param_groups(model, recipe.trainable, stage.weight_decay, 1e-5), lr=1e-5)
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


def profile_steps(step, device: str, steps: int = 3) -> str:
    """Where a step's time goes: torch.profiler's table of the top operators and kernels by
    device time (self), then the share of the wall time in which the device was busy."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=30, max_name_column_width=70)
    summary = f"{steps} steps in {wall * 1e3:.1f} ms"
    if device.startswith("cuda"):
        busy = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
        copies = sum(e.count for e in events if e.key == "cudaMemcpyAsync")
        summary += (f"; kernels busy {busy / 1e3:.1f} ms ({100 * busy / 1e6 / wall:.0f}% of the wall time); "
                    f"{syncs} synchronisations, {copies} cudaMemcpyAsync calls")
    return table + "\n" + summary + "\n"


def measure(cfg, stage, batch_size, device, precision, steps, checkpointing=False, probe=None, profile=False):
    """Times ``steps`` optimizer steps one by one; with a MatmulProbe, each step is followed by
    a measurement of the matmul ceiling lasting about as long, and the ratio is taken per pair."""
    cfg.model.activation_checkpointing = checkpointing
    model = random_model(cfg, device=device).train()
    batch = synthetic_batch(cfg, model, batch_size, device)
    recipe, step = make_step(cfg, model, stage, batch, device, precision)
    seconds, ceilings = [], []
    with only_trainable(model, recipe.trainable):
        step()  # warm-up: allocator, kernels
        counter = FlopCounterMode(display=False)
        with torch.compiler.set_stance("force_eager"):  # compiled kernels bypass the counter
            step(counter)
        flops = counter.get_total_flops()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            seconds.append(time.perf_counter() - t0)
            if probe is not None:
                ceilings.append(probe.rate(max(seconds[-1], 0.05)))
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        table = profile_steps(step, device) if profile else None
    return {"flops_per_step": flops, "seconds": seconds, "ceilings": ceilings, "peak_bytes": peak, "profile": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=0, help="default: the stage's batch on CPU (demo), 128 on GPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--stages", default="stage1,stage2")
    p.add_argument("--compile", default="none", help="model.compile: torch.compile each layer with this backend")
    p.add_argument("--memory", action="store_true",
                   help="also measure memory per sample on CUDA (the allocator's peak at half the batch)")
    p.add_argument("--profile", action="store_true",
                   help="also profile 3 steps per stage: the top operators and kernels by device time")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    cfg = bench_config(args.config, [f"model.compile={args.compile}"])
    if args.device == "cpu":
        reuse_freed_cpu_memory()  # as the trainer does

    batch_size = args.batch_size or (128 if args.device.startswith("cuda") else cfg.stage1.batch_size)
    probe = MatmulProbe(args.device, args.precision)
    result = {"machine": machine(args.device), "config": args.config, "precision": args.precision,
              "compile": args.compile, "batch_size": batch_size, "stages": {}}
    for name in args.stages.split(","):
        stage = getattr(cfg, name)
        r = measure(cfg, stage, batch_size, args.device, args.precision, args.steps, probe=probe, profile=args.profile)
        if r["profile"]:
            print(f"\n{name}, {args.precision}, compile {args.compile}, batch {batch_size}:\n{r['profile']}")
        fractions = [r["flops_per_step"] / s / c for s, c in zip(r["seconds"], r["ceilings"])]
        seconds = statistics.median(r["seconds"])
        row = {
            "objectives": list(stage.objectives),
            "samples_per_s": batch_size / seconds,
            "gflop_per_sample": r["flops_per_step"] / batch_size / 1e9,
            "achieved_flops": r["flops_per_step"] / seconds,
            "matmul_peak_flops": statistics.median(r["ceilings"]),
            # the median over steps of (this step's FLOP/s) / (the ceiling measured right after it)
            "fraction_of_matmul_peak": statistics.median(fractions),
            "fraction_quartiles": statistics.quantiles(fractions, n=4) if len(fractions) > 1 else fractions * 3,
            **({"profile": r["profile"]} if r["profile"] else {}),
        }
        if args.memory and args.device.startswith("cuda"):
            half = batch_size // 2
            for ckpt in (False, True):
                big = measure(cfg, stage, batch_size, args.device, args.precision, 1, ckpt)["peak_bytes"]
                small = measure(cfg, stage, half, args.device, args.precision, 1, ckpt)["peak_bytes"]
                key = "mib_per_sample_checkpointed" if ckpt else "mib_per_sample"
                row[key] = (big - small) / (batch_size - half) / 2**20
        result["stages"][name] = row

    print(f"\n{args.config} config, {args.precision}, compile {args.compile}, batch {batch_size}, {result['machine']}")
    print("| stage | samples/s | GFLOP/sample | achieved TFLOP/s | matmul ceiling TFLOP/s | of ceiling "
          "(quartiles) | MiB/sample | MiB/sample (act. ckpt) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in result["stages"].items():
        mem = " | ".join(f"{row.get(k, float('nan')):.1f}" for k in ("mib_per_sample", "mib_per_sample_checkpointed"))
        q1, _, q3 = row["fraction_quartiles"]
        print(f"| {name} | {row['samples_per_s']:.1f} | {row['gflop_per_sample']:.2f} | "
              f"{row['achieved_flops'] / 1e12:.3f} | {row['matmul_peak_flops'] / 1e12:.3f} | "
              f"{100 * row['fraction_of_matmul_peak']:.1f}% ({100 * q1:.0f}-{100 * q3:.0f}%) | {mem} |")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
