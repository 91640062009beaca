"""A run's directory: claimed before a run starts, checked for room, and the settings a
resumed run must share with the run whose checkpoint it continues."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..checkpoint.model_dir import Bundle
from ..core.config import StageConfig
from ..core.errors import ConfigError, OutputDirError


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
