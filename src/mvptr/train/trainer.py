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

``train`` reads in steps: ``set_up`` (processes, device, optimizer, schedule), ``restore``
(a checkpoint, through ``checkpoint.model_dir.load_training_state``), then ``run_steps``:
per pass ``forward_backward``, per step ``optimizer_step``, ``log_step`` and
``save_checkpoint``. The run's state travels as one ``Run``; the batches are
``step_batches.py``'s, the output directory's checks ``run_dir.py``'s.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint.model_dir import (
    Bundle,
    checkpoint_bytes,
    has_checkpoint,
    load_model_dir,
    load_state_strict,
    load_training_state,
    save_model_dir,
)
from ..core import distributed
from ..core.config import StageConfig
from ..core.errors import ConfigError
from ..core.fileio import keep_json_lines
from ..core.precision import autocast
from ..core.precision import resolve as resolve_precision
from ..core.runtime import freed_cpu_memory_reused, reuse_freed_cpu_memory  # noqa: F401 - the latter re-exported
from .deepspeed_engine import DeepSpeedEngine
from .loggers import RunLoggers
from .recipes import Recipe
from .run_dir import RUN_FILES, check_same_settings, check_writable, claim_run_dir, run_settings  # noqa: F401
from .skips import check_skipped_steps
from .step_batches import SeededCollate, StepBatches, StepItems, micro_stream, step_seed

NO_DECAY = ("bias", "LayerNorm.weight", "logit_scale")


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


@dataclass(frozen=True)
class RunOptions:
    """How a run trains, beside what: ``seed`` (the batch order, masking, negatives and dropout of
    every step), ``resume`` from the checkpoint in the output directory, the ``device``, the
    DataLoader's ``num_workers``, and whether to show a ``progress`` bar."""

    seed: int = 0
    resume: bool = False
    device: str = "cpu"
    num_workers: int = 0
    progress: bool = True


def train(bundle: Bundle, recipe: Recipe, dataset: Dataset, collate, stage: StageConfig, out_dir: str | Path, *,
          seed: int = 0, resume: bool = False, device: str = "cpu", num_workers: int = 0,
          progress: bool = True) -> TrainResult:
    """Train ``bundle``'s model (in place) on ``dataset`` batched by ``collate`` with ``recipe``'s
    losses and ``stage``'s settings; its log and checkpoint go to ``out_dir``."""
    options = RunOptions(seed, resume, device, num_workers, progress)
    # the allocator setting is the run's: the caller's process gets its own back
    with only_trainable(bundle.model, recipe.trainable), freed_cpu_memory_reused(str(device).startswith("cpu")):
        run = set_up(bundle, recipe, dataset, stage, Path(out_dir), options)
        restore(run)
        return run_steps(run, collate)


@dataclass
class Run:
    """A run while it trains: what it trains, its optimizer and schedule, and its progress."""

    bundle: Bundle
    recipe: Recipe
    dataset: Dataset
    stage: StageConfig  # "auto" precision resolved
    out_dir: Path
    options: RunOptions
    dist: distributed.Dist
    device: str
    total: int  # the stage's optimizer steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    settings: dict  # what a resumed run must share with this one (run_dir.run_settings)
    start: int = 0  # the first step this process trains (> 0 after a resume)
    skipped: int = 0  # steps skipped for a loss or gradients that were not finite
    failed: int = 0  # of those, the ones counted against stage.max_skipped_steps
    deepspeed_tag: str | None = None  # the DeepSpeed state to resume from
    engine: object = None  # what runs the passes: the objective, DDP over it, or DeepSpeed
    sums: dict = field(default_factory=dict)  # the step's losses so far
    indices: list = field(default_factory=list)  # the dataset indices of the step's samples
    samples: int = 0
    last: dict = field(default_factory=dict)  # the last logged losses
    t0: float = field(default_factory=time.time)

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    @property
    def ckpt(self) -> Path:
        return self.out_dir / "model"

    @property
    def deepspeed(self) -> bool:
        return self.stage.engine == "deepspeed"

    @property
    def sharded(self) -> bool:
        """ZeRO stage 1 in the torch engine: each process keeps the AdamW state of its share."""
        return self.stage.shard_optimizer and self.dist.on and not self.deepspeed


def stage_steps(stage: StageConfig, samples: int) -> int:
    """The optimizer steps of ``stage`` over ``samples`` samples."""
    per_epoch = samples // stage.batch_size
    if per_epoch < 1:
        raise ConfigError(f"{stage.name}: a batch of {stage.batch_size} is more than the data's {samples} "
                          "samples; lower its batch_size")
    return stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch))


def lr_schedule(optimizer: torch.optim.Optimizer, stage: StageConfig, total: int):
    """Linear warm-up over ``stage.warmup_ratio`` of the steps, then linear decay to 0."""
    warmup = int(stage.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def set_up(bundle: Bundle, recipe: Recipe, dataset: Dataset, stage: StageConfig, out_dir: Path,
           options: RunOptions) -> Run:
    """The run's processes, device, optimizer and schedule; the model moves to the device."""
    d = distributed.from_env(options.device)
    device = distributed.local_device(options.device, d)
    if d.main:
        check_writable(out_dir, checkpoint_bytes(bundle.model))
    stage = replace(stage, precision=resolve_precision(stage.precision, device))  # "auto" -> what it is here
    model = bundle.model.to(device)
    total = stage_steps(stage, len(dataset))
    if stage.engine not in ("torch", "deepspeed"):
        raise ConfigError(f"{stage.name}: unknown engine {stage.engine!r} (expected torch or deepspeed)")
    sharded = stage.shard_optimizer and d.on and stage.engine != "deepspeed"
    groups = param_groups(model, recipe.trainable, stage.weight_decay, stage.lr, recipe.lr_scale)
    optimizer = adamw(groups, stage.lr, sharded)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=stage.precision == "fp16")
    settings = run_settings(stage, total, options.seed, len(dataset), d.world, bundle)
    return Run(bundle, recipe, dataset, stage, out_dir, options, d, device, total, optimizer,
               lr_schedule(optimizer, stage, total), scaler, settings)


def restore(run: Run) -> None:
    """With ``resume``: the checkpoint's weights, optimizer, schedule and step, once it is known to
    come from the same recipe, engine and settings; rows logged after it are dropped (they are
    logged again as their steps are trained again)."""
    if not run.options.resume:
        return
    if has_checkpoint(run.ckpt):
        state = load_training_state(run.ckpt)
        check_same_settings(run.ckpt, state.get("settings"), run.settings)
        _check_same_run(run, state)
        load_state_strict(run.model, load_model_dir(run.ckpt, run.device).model.state_dict(), str(run.ckpt))
        if run.deepspeed:
            run.deepspeed_tag = state["deepspeed_tag"]  # its optimizer state loads with the engine
        else:
            run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            run.scaler.load_state_dict(state["scaler"])
        run.start, run.skipped = int(state["step"]), int(state.get("skipped", 0))
    if run.dist.main:
        keep_json_lines(run.out_dir / "metrics.jsonl", lambda rec: rec.get("step", 0) <= run.start)


def _check_same_run(run: Run, state: dict) -> None:
    name, ckpt, engine = run.recipe.name, run.ckpt, state.get("engine", "torch")
    if state.get("recipe") != name:
        raise ConfigError(f"{ckpt}: checkpoint is from {state.get('recipe')!r}, not {name!r}; resume it "
                          f"as {state.get('recipe')!r}, or train into a new out_dir")
    if engine != run.stage.engine:
        raise ConfigError(f"{ckpt}: checkpoint is from the {engine} engine; resume it with "
                          f"{run.stage.name}.engine={engine}")


def _engine(run: Run):
    objective = _Objective(run.model, run.recipe)
    if run.deepspeed:
        return DeepSpeedEngine(objective, run.optimizer, run.stage, run.dist, run.device, run.out_dir,
                               resume_tag=run.deepspeed_tag)
    # unused parameters are allowed: a step may have no phrase to mask, say
    return DistributedDataParallel(objective, find_unused_parameters=True) if run.dist.on else objective


def _loader(run: Run, collate) -> DataLoader:
    d, stage, seed, workers = run.dist, run.stage, run.options.seed, run.options.num_workers
    batches = StepBatches(len(run.dataset), stage.batch_size, seed, run.start, run.total, rank=d.rank, world=d.world,
                          accum=stage.grad_accum_steps, units=getattr(run.dataset, "units", None))
    return DataLoader(StepItems(run.dataset), batch_sampler=batches, collate_fn=SeededCollate(collate, seed, d.rank,
                      d.world), num_workers=workers, pin_memory=run.device.startswith("cuda"),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def run_steps(run: Run, collate) -> TrainResult:
    """Every step from ``run.start`` to the end: passes, optimizer steps, logs and checkpoints."""
    run.engine = _engine(run)
    neg_gen = torch.Generator(run.device)  # on the device: drawing negatives needs no host sync
    loggers = RunLoggers(run.stage.loggers, run.out_dir, f"{run.out_dir.name}/{run.stage.name}", run.dist.main)
    run.model.train()
    run.t0 = time.time()
    bar = tqdm(total=run.total, initial=run.start, desc=run.stage.name,
               disable=not (run.options.progress and run.dist.main), dynamic_ncols=True)
    try:  # an error closes the progress bar first: the message starts its own line
        for batch in _loader(run, collate):
            step, micro = batch["step"], batch.pop("micro")  # a recipe may read the step (its schedules)
            forward_backward(run, batch, micro, neg_gen)
            if micro < run.stage.grad_accum_steps - 1:
                continue
            optimizer_step(run, step, bar)
            done = step + 1
            bar.update(1)
            if done % run.stage.log_every == 0 or done == run.total:
                log_step(run, done, loggers, bar)
            run.sums = {}
            if (run.stage.save_every and done % run.stage.save_every == 0) or done == run.total:
                save_checkpoint(run, done)
    finally:
        bar.close()
        loggers.close()
    if run.deepspeed:
        run.engine.finish()
    run.model.eval()
    seconds = time.time() - run.t0
    return TrainResult(run.total - run.start, seconds, run.samples / max(seconds, 1e-9), run.last, run.skipped,
                       run.stage.precision)


def forward_backward(run: Run, batch: dict, micro: int, neg_gen: torch.Generator) -> None:
    """Pass ``micro`` of a step, forward and backward, its dropout and negatives seeded by
    (seed, step, pass, rank); its losses are added to the step's."""
    d, seed, accum, step = run.dist, run.options.seed, run.stage.grad_accum_steps, batch["step"]
    run.indices += batch.pop("sample_index")
    batch = {k: v.to(run.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.manual_seed(step_seed(seed, step, micro_stream(4, micro, d.rank, d.world)))  # dropout
    neg_gen.manual_seed(step_seed(seed, step, micro_stream(3, micro, d.rank, d.world)))
    # gradients are averaged across processes on the last pass of a step only
    sync = run.engine.no_sync() if d.on and micro < accum - 1 else contextlib.nullcontext()
    with sync:
        with autocast(run.device, run.stage.precision):
            losses = run.engine(batch, neg_gen)
        loss = sum(run.recipe.weights.get(name, 1.0) * value for name, value in losses.items())
        if run.deepspeed:
            run.engine.backward(loss)
        else:
            run.scaler.scale(loss / accum).backward()
    for k, v in {"loss": loss, **losses}.items():
        run.sums[k] = run.sums.get(k, 0.0) + v.detach().float() / accum
    run.samples += len(batch["input_ids"]) * d.world


def optimizer_step(run: Run, step: int, bar) -> None:
    """Clip and apply the step's gradients, unless its loss or gradients are not finite (the step
    is then skipped, and counted); the schedule moves on either way."""
    before = run.skipped
    # every process takes the same decision: gradients are already averaged, the loss is not
    loss_finite = distributed.mean(torch.isfinite(run.sums["loss"]).float()) == 1
    if run.deepspeed:
        run.skipped += not run.engine.applied()  # DeepSpeed skips a step whose gradients are not finite
    else:
        run.scaler.unscale_(run.optimizer)
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, run.stage.grad_clip)
        if loss_finite and torch.isfinite(grad_norm):
            run.scaler.step(run.optimizer)
        else:
            run.skipped += 1
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.skipped > before:  # fp16's loss scaler skips overflowing steps by design: not counted against the limit
        bar.set_postfix(loss=f"{float(run.sums['loss']):.3g}", skipped=run.skipped)
        run.failed += not loss_finite or run.stage.precision != "fp16"
        check_skipped_steps(run.stage, run.failed, step, run.dataset, run.indices)
    run.indices = []


def log_step(run: Run, done: int, loggers: RunLoggers, bar) -> None:
    """The step's losses (averaged over the processes), learning rate, temperature and speed."""
    logged = {k: distributed.mean(v).item() for k, v in run.sums.items()}
    run.last = {k: round(v, 5) for k, v in logged.items() if k != "loss"}
    temperature = run.model.temperature
    loggers.log({
        "stage": run.stage.name, "step": done, "loss": round(logged["loss"], 5), **run.last,
        "lr": run.scheduler.get_last_lr()[0], "temperature": None if temperature is None else round(temperature, 5),
        "samples_per_s": round(run.samples / (time.time() - run.t0), 2), "skipped": run.skipped,
    })
    bar.set_postfix(loss=f"{logged['loss']:.3f}", **({"skipped": run.skipped} if run.skipped else {}))


def save_checkpoint(run: Run, done: int) -> None:
    """The model directory with the training state of step ``done`` (DeepSpeed: its state beside it)."""
    state = {"step": done, "scheduler": run.scheduler.state_dict(), "skipped": run.skipped,
             "recipe": run.recipe.name, "settings": run.settings}
    if run.deepspeed:
        run.engine.save(run.ckpt, run.bundle, state)
        return
    if run.sharded:
        run.optimizer.consolidate_state_dict(to=0)  # every process sends its share
    if run.dist.main:
        save_model_dir(run.ckpt, run.bundle, {**state, "optimizer": run.optimizer.state_dict(),
                                              "scaler": run.scaler.state_dict()})
    distributed.barrier()
