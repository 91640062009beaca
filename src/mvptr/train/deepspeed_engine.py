"""``stage.engine: deepspeed``: the training loop's optimizer step under DeepSpeed ZeRO.

The loop (data, seeding, logging, the LR schedule) is the trainer's; DeepSpeed takes the
gradient reduction, clipping, the loss scale and the AdamW step, with the optimizer state
(ZeRO 1) and the gradients (ZeRO 2) partitioned across processes. With bf16 or fp16 the
module holds 16-bit weights and the ZeRO optimizer the fp32 master weights; the model
directory is always written from the fp32 weights.

Checkpoints: the model directory as with the torch engine (its training state names the
DeepSpeed tag to resume from), and DeepSpeed's own partitioned optimizer state under
``<out_dir>/deepspeed/step<N>``; the previous tag is removed only once the model directory
pointing at the new one is in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from unittest import mock

import torch

from ..checkpoint.model_dir import Bundle, save_model_dir
from ..core import distributed
from ..core.config import StageConfig
from ..core.errors import ConfigError, MissingFileError
from ..core.extras import MissingExtra

DS_DIR = "deepspeed"


def import_deepspeed(device: str):
    if device == "cpu":  # DeepSpeed picks its accelerator once, at import
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as err:
        raise MissingExtra(f'stage.engine=deepspeed needs DeepSpeed ({err}): pip install "mvptr[deepspeed]"',
                           name="deepspeed") from None
    return deepspeed


def ds_config(stage: StageConfig, world: int, trainable: int = int(5e8)) -> dict:
    """The DeepSpeed configuration of a stage: the same global batch, accumulation, clipping
    and precision as the torch engine (fp16's dynamic loss scale behaves as torch's GradScaler)."""
    accum = stage.grad_accum_steps
    if stage.zero_stage not in (1, 2):  # ZeRO 3 partitions the weights themselves
        raise ConfigError(f"{stage.name}.zero_stage must be 1 or 2, not {stage.zero_stage}")
    if stage.batch_size % (world * accum):
        raise ConfigError(f"batch size {stage.batch_size} is not a multiple of "
                          f"{world} processes x {accum} accumulation steps")
    config = {
        "train_batch_size": stage.batch_size,
        "train_micro_batch_size_per_gpu": stage.batch_size // (world * accum),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": stage.grad_clip,
        # DeepSpeed allocates its reduction bucket (5e8 elements by default) anew on every pass:
        # one no larger than the trainable weights costs the same communication
        "zero_optimization": {"stage": stage.zero_stage, "reduce_bucket_size": min(int(5e8), trainable)},
        "steps_per_print": 2**31 - 1,  # the trainer logs
    }
    if stage.precision == "bf16":
        config["bf16"] = {"enabled": True, "check_grad_overflow": True}  # skip a non-finite step
    elif stage.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 2000,
                          "hysteresis": 1, "min_loss_scale": 1}
    elif stage.precision != "fp32":
        raise ConfigError(f"unknown precision {stage.precision!r}")
    return config


class DeepSpeedEngine:
    """A DeepSpeed engine over the trainer's objective, optimizer and step counting.

    ``__call__`` runs a forward pass; ``backward`` also tells DeepSpeed the pass is done
    (it steps the optimizer after the last pass of a step); ``applied`` says whether that
    step was applied (False: non-finite gradients, skipped).
    """

    def __init__(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: StageConfig,
                 d: distributed.Dist, device: str, out_dir: Path, *, resume_tag: str | None = None):
        deepspeed = import_deepspeed(device)
        if not torch.distributed.is_initialized():  # one process: a group of one, without a launcher
            torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
            os.environ.setdefault("LOCAL_RANK", "0")
        # ZeRO's all-gather of the updated partitions warns on every step under torch >= 2.12
        warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor` is deprecated", category=FutureWarning)
        deepspeed.init_distributed(dist_backend="nccl" if device.startswith("cuda") else "gloo")
        self.model = objective.model
        # DeepSpeed casts the whole module to 16 bits; frozen weights and float buffers keep
        # their fp32 originals here (trainable ones have fp32 masters in the optimizer)
        self.fp32 = {}
        if stage.precision != "fp32":
            self.fp32 = {name: t.data for name, t in self.model.state_dict(keep_vars=True).items()
                         if t.is_floating_point() and not t.requires_grad}
        # DeepSpeed 0.19 broadcasts rank 0's weights as bytes, p.data.view(torch.uint8), which a
        # 0-dim weight (the VSC temperature) cannot take; they are broadcast here instead
        trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        for t in self.model.state_dict().values() if d.on else ():
            torch.distributed.broadcast(t, 0)
        config = ds_config(stage, d.world, trainable)
        with mock.patch.object(deepspeed.runtime.engine.DeepSpeedEngine, "_broadcast_model", lambda engine: None):
            self.engine, *_ = deepspeed.initialize(model=objective, optimizer=optimizer, config=config,
                                                   dist_init_required=False)
        self.dir = out_dir / DS_DIR
        if resume_tag is not None:
            # module weights were restored from the model directory; this brings the fp32
            # masters and the AdamW moments of this process's partition
            path, _ = self.engine.load_checkpoint(str(self.dir), tag=resume_tag, load_module_strict=False,
                                                  load_lr_scheduler_states=False)
            if path is None:
                raise MissingFileError(f"{self.dir / resume_tag}: DeepSpeed checkpoint missing")

    def __call__(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.engine(batch, generator)

    def no_sync(self):
        return contextlib.nullcontext()  # ZeRO 2 reduces gradient partitions on every pass

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # divides by the accumulation steps (and scales fp16)
        self.engine.step()  # an optimizer step on the last pass of a step only

    def applied(self) -> bool:
        return self.engine.was_step_applied()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's fp32 weights (every process takes part: the masters are partitioned)."""
        from deepspeed.utils import safe_get_full_fp32_param

        full, state = {}, {}
        for name, t in self.model.state_dict(keep_vars=True).items():
            if name in self.fp32:
                state[name] = self.fp32[name]
            elif isinstance(t, torch.nn.Parameter) and t.requires_grad:
                if id(t) not in full:
                    full[id(t)] = safe_get_full_fp32_param(t)
                state[name] = full[id(t)] if full[id(t)] is not None else t.detach()
            else:
                state[name] = t.detach()
        return {k: v.contiguous().cpu() for k, v in state.items()}

    def save(self, ckpt: Path, bundle: Bundle, training_state: dict) -> None:
        """DeepSpeed's partitioned state, then the model directory that points at it, then the
        previous DeepSpeed state goes: a crash at any point leaves a consistent pair."""
        tag = f"step{training_state['step']}"
        # DeepSpeed writes and reads these with pickle (torch.load(weights_only=False)): resume
        # only from an output directory this project wrote
        self.engine.save_checkpoint(str(self.dir), tag=tag, save_latest=False, exclude_frozen_parameters=True)
        weights = self.state_dict()
        if distributed.active().main:
            save_model_dir(ckpt, bundle, {**training_state, "engine": "deepspeed", "deepspeed_tag": tag},
                           weights=weights)
            for old in self.dir.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old)
        distributed.barrier()

    def finish(self) -> None:
        """Give the model back in fp32, detached from DeepSpeed's buffers."""
        weights = self.state_dict()
        self.model.float()
        with torch.no_grad():
            for name, t in self.model.state_dict(keep_vars=True).items():
                t.data = weights[name].to(t.device).clone() if t.is_floating_point() else t.data
        self.engine.destroy()
