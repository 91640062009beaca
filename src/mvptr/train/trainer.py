"""The one training loop, for every pre-training stage and fine-tuning recipe.

AdamW with decoupled weight decay (not on biases and LayerNorm weights), linear warm-up
then linear decay, gradient clipping, mixed precision (bf16, or fp16 with a loss scaler),
gradient accumulation, several processes under torchrun (DistributedDataParallel, or
DeepSpeed ZeRO with ``stage.engine: deepspeed``: deepspeed_engine.py),
JSON-lines metrics, checkpoints as model directories, and exact resume: the batch order,
the masking, the negatives and the dropout of every step are functions of (seed, step,
rank), so a resumed CPU run ends with the same weights.

``stage.batch_size`` is the global batch of one optimizer step: each of W processes takes
batch / (W * grad_accum_steps) samples per forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..checkpoint.model_dir import (
    STATE_FILE,
    Bundle,
    checkpoint_bytes,
    has_checkpoint,
    load_model_dir,
    load_state_strict,
    save_model_dir,
)
from ..core import distributed
from ..core.config import StageConfig
from ..core.errors import ConfigError, FormatError, OutputDirError
from ..core.fileio import keep_json_lines
from ..core.precision import autocast
from ..core.precision import resolve as resolve_precision
from ..core.runtime import freed_cpu_memory_reused, reuse_freed_cpu_memory  # noqa: F401 - the latter re-exported
from .deepspeed_engine import DeepSpeedEngine
from .loggers import RunLoggers
from .recipes import Recipe
from .skips import check_skipped_steps

NO_DECAY = ("bias", "LayerNorm.weight", "logit_scale")


def step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7919 + stream) % (2**63 - 1)


def micro_stream(stream: int, micro: int, rank: int, world: int) -> int:
    """Random stream of one forward pass; the first pass of rank 0 keeps the plain stream."""
    return stream + 16 * (micro * world + rank)


class StepBatches(Sampler):
    """Yields this rank's forward passes of steps start..total-1 as lists of (step, micro, index).

    Epoch e is a permutation seeded by (seed, e), so any step's batch can be rebuilt without
    the others. A step's global batch is cut into ``accum`` passes and each pass into
    ``world`` contiguous shares, in rank order, so gathering the shares rebuilds the pass.
    With ``units`` (lists of indices covering 0..n-1 once, see ``data.batch_groups``) the
    permutation is of the units, whose indices stay next to each other.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int,
                 rank: int = 0, world: int = 1, accum: int = 1, *, units: list[list[int]] | None = None):
        if batch_size % (world * accum):
            raise ValueError(f"batch size {batch_size} is not a multiple of "
                             f"{world} processes x {accum} accumulation steps")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.rank, self.world, self.accum = rank, world, accum
        self.micro = batch_size // (world * accum)
        self.per_epoch = n // batch_size
        self.units = units

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum

    def __iter__(self):
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(step_seed(self.seed, epoch, 1))
                perm, perm_epoch = self._permutation(g), epoch
            batch = perm[k * self.batch_size : (k + 1) * self.batch_size]
            for micro in range(self.accum):
                at = (micro * self.world + self.rank) * self.micro
                yield [(step, micro, i) for i in batch[at : at + self.micro]]


    def _permutation(self, g: torch.Generator) -> list[int]:
        if self.units is None:
            return torch.randperm(self.n, generator=g).tolist()
        return [i for u in torch.randperm(len(self.units), generator=g).tolist() for i in self.units[u]]


class _StepItems(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        step, micro, i = key
        return step, micro, self.dataset[i], i


class _SeededCollate:
    """Re-seeds the collator's generator from the pass, so masking does not depend on workers."""

    def __init__(self, collate, seed: int, rank: int, world: int):
        self.collate, self.seed, self.rank, self.world = collate, seed, rank, world

    def __call__(self, keyed):
        step, micro = keyed[0][0], keyed[0][1]
        if getattr(self.collate, "generator", None) is not None:
            stream = micro_stream(2, micro, self.rank, self.world)
            self.collate.generator.manual_seed(step_seed(self.seed, step, stream))
        batch = self.collate([item for _, _, item, _ in keyed])
        batch["step"], batch["micro"] = step, micro
        batch["sample_index"] = [i for _, _, _, i in keyed]  # names the samples of a skipped step
        return batch


class _Objective(torch.nn.Module):
    """A recipe's losses as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe):
        super().__init__()
        self.model, self.recipe = model, recipe

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.recipe.loss(self.model, batch, generator)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples_per_second: float
    last: dict
    skipped_steps: int
    precision: str = "fp32"  # the one it trained in ("auto" resolved)


def param_groups(model: torch.nn.Module, trainable: Callable[[str], bool], weight_decay: float, lr: float,
                 lr_scale: Callable[[str], float] = lambda name: 1.0) -> list[dict]:
    """The trainable parameters in groups of one weight decay and one learning rate."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or not trainable(name):
            continue
        groups.setdefault((not name.endswith(NO_DECAY), lr_scale(name)), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
            for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def check_writable(out_dir: Path, needed: int = 64 * 2**20) -> None:
    """Fail before training or evaluating, not after hours, when the output directory cannot take
    its files (``needed`` bytes free)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_probe"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write to output directory {out_dir}: {err.strerror}; "
                             "choose another (out_dir=..., or --out)") from None
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise OutputDirError(f"output directory {out_dir} has only {free // 2**20} MiB free; "
                             f"its files need about {needed // 2**20} MiB")


def adamw(groups: list[dict], lr: float, sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW as one fused kernel per parameter group (on a CPU about 6x faster than the loop
    over tensors: the shared word/phrase table is updated whole every step)."""
    if sharded:
        from torch.distributed.optim import ZeroRedundancyOptimizer  # its import is slow and noisy

        # ZeRO stage 1: each process keeps the AdamW moments of its share of the parameters
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr, fused=True)


@contextlib.contextmanager
def only_trainable(model: torch.nn.Module, trainable: Callable[[str], bool]):
    """Freeze what a recipe does not train for its duration: no gradients are computed for it."""
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(before[name] and trainable(name))
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


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
    # the allocator setting is the run's: the caller's process gets its own back
    with only_trainable(bundle.model, recipe.trainable), freed_cpu_memory_reused(str(device).startswith("cpu")):
        return _train(bundle, recipe, dataset, collate, stage, Path(out_dir), seed, resume, device, num_workers,
                      progress)


# what a training run leaves in its directory: its log and its checkpoint (and a checkpoint's
# transient neighbours while one is written)
RUN_FILES = ("metrics.jsonl", "model", "model.old", "model.tmp")


def claim_run_dir(out_dir: str | Path, resume: bool, overwrite: bool = False) -> None:
    """A new run never mixes with one already in ``out_dir``: that is an error unless the run
    is resumed (``resume``) or replaced (``overwrite``: its log and checkpoint are removed
    first). Called before any data is read."""
    out = Path(out_dir)
    held = [name for name in RUN_FILES[:2] if (out / name).exists()]
    if resume or not held:
        return
    if not overwrite:
        raise OutputDirError(f"{out} holds a run already ({', '.join(held)}); pass --resume to continue it, "
                             "--overwrite to replace it, or choose another output directory")
    for name in [*RUN_FILES, *(p.name for p in out.glob("model.tmp.*"))]:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def run_settings(stage: StageConfig, total: int, seed: int, samples: int, processes: int, bundle: Bundle) -> dict:
    """What a resumed run must share with the run that wrote its checkpoint: the schedule, the
    optimizer's settings, the data and the vocabularies (by content: a vocabulary of the same
    size with other phrases gives other rows the same ids)."""
    vocab = "\n".join(bundle.phrase_vocab.phrase(i) for i in range(len(bundle.phrase_vocab)))
    return {
        "stage": stage.name, "objectives": sorted(stage.objectives),  # which parameters train, which losses
        "batch_size": stage.batch_size, "steps": total, "lr": stage.lr, "weight_decay": stage.weight_decay,
        "warmup_ratio": stage.warmup_ratio, "grad_clip": stage.grad_clip, "grad_accum_steps": stage.grad_accum_steps,
        "cross_modal_lr_scale": stage.cross_modal_lr_scale,
        "negative_warmup_steps": stage.negative_warmup_steps, "loss_weights": dict(stage.loss_weights),
        "precision": stage.precision, "seed": seed, "samples": samples, "processes": processes,
        "phrase_vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
        "tag_vocab_sha256": hashlib.sha256("\n".join(bundle.tag_vocab).encode()).hexdigest(),
    }


# settings added after checkpoints began recording them, with the value every earlier run had
SETTINGS_BEFORE_RECORDED = {"cross_modal_lr_scale": 1.0}
# recorded since they moved from objectives to the stage; an older checkpoint does not say what it
# had (the demo warmed up, other presets did not), so it resumes with the settings given now
SETTINGS_NOT_RECORDED_BEFORE = ("negative_warmup_steps", "loss_weights", "stage", "objectives")


def check_same_settings(ckpt: Path, saved: dict | None, now: dict) -> None:
    """A resumed run continues the one it resumes, or stops: never old state under new settings."""
    if saved is None:  # a checkpoint written before settings were recorded
        return
    saved = {**SETTINGS_BEFORE_RECORDED, **{k: now[k] for k in SETTINGS_NOT_RECORDED_BEFORE if k in now}, **saved}
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if changed:
        raise ConfigError(f"{ckpt}: cannot resume with changed settings ({'; '.join(changed)}): resume with the "
                          "settings it was trained with, or train into a new out_dir")


def _train(bundle, recipe, dataset, collate, stage, out_dir, seed, resume, device, num_workers, progress):
    d = distributed.from_env(device)
    device = distributed.local_device(device, d)
    if d.main:
        check_writable(out_dir, checkpoint_bytes(bundle.model))
    stage = replace(stage, precision=resolve_precision(stage.precision, device))  # "auto" -> what it is here
    accum = stage.grad_accum_steps
    model = bundle.model.to(device)
    per_epoch = len(dataset) // stage.batch_size
    if per_epoch < 1:
        raise ConfigError(f"{stage.name}: a batch of {stage.batch_size} is more than the data's {len(dataset)} "
                          "samples; lower its batch_size")
    total = stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch))
    if stage.engine not in ("torch", "deepspeed"):
        raise ValueError(f"{stage.name}: unknown engine {stage.engine!r} (expected torch or deepspeed)")
    use_ds = stage.engine == "deepspeed"
    sharded = stage.shard_optimizer and d.on and not use_ds
    optimizer = adamw(param_groups(model, recipe.trainable, stage.weight_decay, stage.lr, recipe.lr_scale), stage.lr,
                      sharded)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    warmup = int(stage.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=stage.precision == "fp16")
    start, skipped, ds_tag = 0, 0, None
    ckpt = out_dir / "model"
    settings = run_settings(stage, total, seed, len(dataset), d.world, bundle)
    if resume and has_checkpoint(ckpt):
        try:
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
            raise FormatError(f"{ckpt / STATE_FILE}: damaged training state ({type(err).__name__}); resume from a "
                              f"copy, or remove {ckpt} to train the stage from its start", "model directory") from None
        check_same_settings(ckpt, state.get("settings"), settings)
        if state.get("recipe") != recipe.name:
            raise ConfigError(f"{ckpt}: checkpoint is from {state.get('recipe')!r}, not {recipe.name!r}; resume it "
                              f"as {state.get('recipe')!r}, or train into a new out_dir")
        if state.get("engine", "torch") != stage.engine:
            raise ConfigError(f"{ckpt}: checkpoint is from the {state.get('engine', 'torch')} engine; "
                             f"resume it with {stage.name}.engine={state.get('engine', 'torch')}")
        load_state_strict(model, load_model_dir(ckpt, device).model.state_dict(), str(ckpt))
        if use_ds:
            ds_tag = state["deepspeed_tag"]  # its optimizer state loads with the engine
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start, skipped = int(state["step"]), int(state.get("skipped", 0))
    if resume and d.main:  # rows logged after the checkpoint are logged again as they are trained again
        keep_json_lines(out_dir / "metrics.jsonl", lambda rec: rec.get("step", 0) <= start)

    objective = _Objective(model, recipe)
    if use_ds:
        engine = DeepSpeedEngine(objective, optimizer, stage, d, device, out_dir, ds_tag)
    else:
        # unused parameters are allowed: a step may have no phrase to mask, say
        engine = DistributedDataParallel(objective, find_unused_parameters=True) if d.on else objective
    loader = DataLoader(
        _StepItems(dataset),
        batch_sampler=StepBatches(len(dataset), stage.batch_size, seed, start, total, d.rank, d.world, accum,
                                  units=getattr(dataset, "units", None)),
        collate_fn=_SeededCollate(collate, seed, d.rank, d.world),
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    neg_gen = torch.Generator(device)  # on the device: drawing negatives needs no host sync
    loggers = RunLoggers(stage.loggers, out_dir, f"{out_dir.name}/{stage.name}", d.main)
    model.train()
    t0, samples, last, sums, indices, failed = time.time(), 0, {}, {}, [], 0
    bar = tqdm(total=total, initial=start, desc=stage.name, disable=not (progress and d.main), dynamic_ncols=True)
    try:  # an error closes the progress bar first: the message starts its own line
        for batch in loader:
            step, micro = batch["step"], batch.pop("micro")  # a recipe may read the step (its schedules)
            indices += batch.pop("sample_index")
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            torch.manual_seed(step_seed(seed, step, micro_stream(4, micro, d.rank, d.world)))  # dropout
            neg_gen.manual_seed(step_seed(seed, step, micro_stream(3, micro, d.rank, d.world)))
            last_pass = micro == accum - 1
            # gradients are averaged across processes on the last pass of a step only
            sync = engine.no_sync() if d.on and not last_pass else contextlib.nullcontext()
            with sync:
                with autocast(device, stage.precision):
                    losses = engine(batch, neg_gen)
                loss = sum(recipe.weights.get(name, 1.0) * value for name, value in losses.items())
                if use_ds:
                    engine.backward(loss)
                else:
                    scaler.scale(loss / accum).backward()
            for k, v in {"loss": loss, **losses}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
            samples += len(batch["input_ids"]) * d.world
            if not last_pass:
                continue
            before = skipped
            # every process takes the same decision: gradients are already averaged, the loss is not
            loss_finite = distributed.mean(torch.isfinite(sums["loss"]).float()) == 1
            if use_ds:
                skipped += not engine.applied()  # DeepSpeed skips a step whose gradients are not finite
            else:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
                finite = loss_finite and torch.isfinite(grad_norm)
                if finite:
                    scaler.step(optimizer)
                else:
                    skipped += 1
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if skipped > before:  # fp16's loss scaler skips overflowing steps by design: not counted against the limit
                bar.set_postfix(loss=f"{float(sums['loss']):.3g}", skipped=skipped)
                failed += not loss_finite or stage.precision != "fp16"
                check_skipped_steps(stage, failed, step, dataset, indices)
            done, indices = step + 1, []
            bar.update(1)
            if done % stage.log_every == 0 or done == total:
                logged = {k: distributed.mean(v).item() for k, v in sums.items()}
                last = {k: round(v, 5) for k, v in logged.items() if k != "loss"}
                record = {
                    "stage": stage.name, "step": done, "loss": round(logged["loss"], 5), **last,
                    "lr": scheduler.get_last_lr()[0],
                    "temperature": None if model.temperature is None else round(model.temperature, 5),
                    "samples_per_s": round(samples / (time.time() - t0), 2), "skipped": skipped,
                }
                loggers.log(record)
                bar.set_postfix(loss=f"{logged['loss']:.3f}", **({"skipped": skipped} if skipped else {}))
            sums = {}
            if not ((stage.save_every and done % stage.save_every == 0) or done == total):
                continue
            if use_ds:
                engine.save(ckpt, bundle, {"step": done, "scheduler": scheduler.state_dict(), "skipped": skipped,
                                           "recipe": recipe.name, "settings": settings})  # DeepSpeed's state beside it
            else:
                if sharded:
                    optimizer.consolidate_state_dict(to=0)  # every process sends its share
                if d.main:
                    save_model_dir(ckpt, bundle, {
                        "step": done, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "skipped": skipped, "recipe": recipe.name, "settings": settings,
                    })
                distributed.barrier()
    finally:
        bar.close()
        loggers.close()
    if use_ds:
        engine.finish()
    model.eval()
    seconds = time.time() - t0
    return TrainResult(total - start, seconds, samples / max(seconds, 1e-9), last, skipped, stage.precision)
