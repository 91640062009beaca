"""The one training loop, for every pre-training stage and fine-tuning recipe.

AdamW with decoupled weight decay (not on biases and LayerNorm weights), linear warm-up
then linear decay, gradient clipping, JSON-lines metrics, checkpoints as model
directories, and exact resume: batch order and masking are functions of (seed, step), and
the global RNG state is saved, so a resumed CPU run ends with the same weights.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..checkpoint import Bundle, STATE_FILE, has_checkpoint, load_model_dir, load_state_strict, save_model_dir
from ..config import StageConfig
from .recipes import Recipe

NO_DECAY = ("bias", "LayerNorm.weight", "logit_scale")


def step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7919 + stream) % (2**63 - 1)


class StepBatches(Sampler):
    """Yields the batches of steps start..total-1 as lists of (step, index); epoch e is a
    permutation seeded by (seed, e), so any step's batch can be rebuilt without the others."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int):
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(step_seed(self.seed, epoch, 1))
                perm, perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            yield [(step, i) for i in perm[k * self.batch_size : (k + 1) * self.batch_size]]


class _StepItems(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        step, i = key
        return step, self.dataset[i]


class _SeededCollate:
    """Re-seeds the collator's generator from the step, so masking does not depend on workers."""

    def __init__(self, collate, seed: int):
        self.collate, self.seed = collate, seed

    def __call__(self, keyed):
        step = keyed[0][0]
        if getattr(self.collate, "generator", None) is not None:
            self.collate.generator.manual_seed(step_seed(self.seed, step, 2))
        batch = self.collate([item for _, item in keyed])
        batch["step"] = step
        return batch


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples_per_second: float
    last: dict
    skipped_steps: int


def param_groups(model: torch.nn.Module, trainable: Callable[[str], bool], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or not trainable(name):
            continue
        (no_decay if name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_writable(out_dir: Path) -> None:
    """Fail before training, not after hours, when the output directory cannot take a checkpoint."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_probe"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot write to output directory {out_dir}: {err.strerror}") from None
    free = shutil.disk_usage(out_dir).free
    if free < 64 * 2**20:
        raise OSError(f"output directory {out_dir} has only {free // 2**20} MiB free")


def train(
    bundle: Bundle,
    recipe: Recipe,
    dataset: Dataset,
    collate,
    stage: StageConfig,
    out_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> TrainResult:
    out_dir = Path(out_dir)
    check_writable(out_dir)
    model = bundle.model.to(device)
    per_epoch = len(dataset) // stage.batch_size
    if per_epoch < 1:
        raise ValueError(f"{stage.name}: {len(dataset)} samples is fewer than one batch of {stage.batch_size}")
    total = stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch))
    optimizer = torch.optim.AdamW(param_groups(model, recipe.trainable, stage.weight_decay), lr=stage.lr)
    warmup = int(stage.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start, skipped = 0, 0
    ckpt = out_dir / "model"
    if resume and has_checkpoint(ckpt):
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        if state.get("recipe") != recipe.name:
            raise ValueError(f"{ckpt}: checkpoint is from {state.get('recipe')!r}, not {recipe.name!r}")
        load_state_strict(model, load_model_dir(ckpt, device).model.state_dict(), str(ckpt))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, skipped = int(state["step"]), int(state.get("skipped", 0))

    loader = DataLoader(
        _StepItems(dataset),
        batch_sampler=StepBatches(len(dataset), stage.batch_size, seed, start, total),
        collate_fn=_SeededCollate(collate, seed),
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
    )
    neg_gen = torch.Generator()
    metrics_file = out_dir / "metrics.jsonl"
    model.train()
    t0, samples, last = time.time(), 0, {}
    bar = tqdm(total=total, initial=start, desc=stage.name, disable=not progress, dynamic_ncols=True)
    for batch in loader:
        step = batch.pop("step")
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        neg_gen.manual_seed(step_seed(seed, step, 3))
        losses = recipe.loss(model, batch, neg_gen)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], stage.grad_clip
            )
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                skipped += 1
        else:
            skipped += 1
        scheduler.step()
        samples += len(batch["input_ids"])
        done = step + 1
        bar.update(1)
        if done % stage.log_every == 0 or done == total:
            last = {k: round(v.item(), 5) for k, v in losses.items()}
            record = {
                "stage": stage.name, "step": done, "loss": round(loss.item(), 5), **last,
                "lr": scheduler.get_last_lr()[0], "temperature": round(model.temperature, 5),
                "samples_per_s": round(samples / (time.time() - t0), 2), "skipped": skipped,
            }
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (stage.save_every and done % stage.save_every == 0) or done == total:
            save_model_dir(ckpt, bundle, {
                "step": done, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "skipped": skipped, "recipe": recipe.name,
            })
    bar.close()
    model.eval()
    seconds = time.time() - t0
    return TrainResult(total - start, seconds, samples / max(seconds, 1e-9), last, skipped)
