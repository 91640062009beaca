"""``mvptr doctor``: before a long run, every file it will read opened by the reader the run
uses, the disk its checkpoints need, and the device and precision it will run with.

Each check gives one line, "ok", "warn" (the run goes on, with a caveat) or "FAIL": the first
problem that would stop the run stops the checks too, with the run's own error (the file and
what to do). Checks are in the order a run meets them, cheapest first."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoint.bert_init import init_dir
from ..core.config import Config
from ..core.errors import ConfigError, MvptrError, OutputDirError
from ..core.precision import native_bf16, resolve
from ..core.runtime import cpu_model
from ..data.pretrain import corpora
from ..model.modeling import MVPTR
from .doctor_data import (
    Check,
    check_captions,
    check_coverage,
    check_features,
    check_phrase_vocab,
    check_phrases,
    check_tags,
)
from .doctor_tasks import check_task, named_tasks

MiB = 2**20
STAGES = ("stage1", "stage2")


def check_device(cfg: Config) -> Check:
    """The device the run will use is there (torchrun: each process takes the GPU of its local rank)."""
    kind, _, index = cfg.device.partition(":")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ranks = f"; {world} processes (torchrun), each on cuda:<local rank>" if world > 1 and kind == "cuda" else ""
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= int(index or 0):
            raise ConfigError(f"device={cfg.device}: torch {torch.__version__} sees {count} CUDA devices; set "
                              "device=cpu, or run where the GPU is visible (CUDA_VISIBLE_DEVICES)")
        return Check("ok", "device", f"{cfg.device} ({torch.cuda.get_device_name(int(index or 0))}){ranks}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={cfg.device}: torch {torch.__version__} has no MPS device here; set device=cpu")
    threads = cfg.threads or torch.get_num_threads()
    return Check("ok", "device", f"{cfg.device} ({cpu_model()}, {threads} threads)" if kind == "cpu" else cfg.device)


def check_precision(cfg: Config, stages: list[str], tasks: list[str]) -> Check:
    """What each stage, task and the evaluation compute in ("auto": bf16 where the device multiplies it natively)."""
    settings = [(s, getattr(cfg, s).precision) for s in stages]
    settings += [(f"finetune {t}", cfg.finetune[t].train.precision) for t in tasks]
    settings.append(("eval", cfg.eval.precision))
    native = native_bf16(cfg.device)
    parts = [f"{name} {resolve(p, cfg.device)}" + (" (auto)" if p == "auto" else "") for name, p in settings]
    why = f"; auto means bf16 where {cfg.device} multiplies bf16 natively: {'yes' if native else 'no'}"
    return Check("ok", "precision", ", ".join(parts) + (why if any(p == "auto" for _, p in settings) else ""))


def nearest_existing(path: str | Path) -> Path:
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def checkpoint_estimate(cfg: Config, num_phrases: int, kept: int) -> tuple[int, int, int]:
    """(parameters, weight bytes, bytes the run's ``kept`` checkpoints need): each checkpoint holds
    the weights and AdamW's two moments (3x the weights) plus tokenizer and vocabularies, and the
    one being written sits beside the old one until it replaces it. The model is built on the meta
    device: shapes only, no memory."""
    with torch.device("meta"):
        model = MVPTR(cfg.model, num_phrases, torch.zeros((1, 1), dtype=torch.long))
    params = sum(p.numel() for p in model.parameters())
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return params, weights, kept * (3 * weights + 16 * MiB) + 3 * weights


def check_disk(cfg: Config, num_phrases: int, kept: int) -> Check:
    if not kept:
        return Check("ok", "disk", "no checkpoint to write (--stage none and no --task)")
    params, weights, needed = checkpoint_estimate(cfg, num_phrases, kept)
    where = nearest_existing(cfg.out_dir)
    free = shutil.disk_usage(where).free
    need = (f"{params / 1e6:.1f}M parameters ({weights / MiB:.0f} MiB fp32), {kept} checkpoints kept: "
            f"about {needed / MiB:.0f} MiB")
    if free < needed:
        raise OutputDirError(f"out_dir {cfg.out_dir}: {where} has {free / MiB:.0f} MiB free, the run's checkpoints "
                             f"need {need}; free some space or set out_dir=... to a larger disk")
    return Check("ok", "disk", f"{need}; {free / MiB:.0f} MiB free at {where}")


def init_check(cfg: Config) -> Check:
    path = init_dir(cfg)
    return Check("ok", "init", "random weights" if path is None else f"{cfg.init.source}: {path}")


Report = Callable[[Check], None]


def _run(checks: list[Check], report: Report, name: str, fn: Callable, *args):
    """One check: its line reported; a FAIL line, then the run's own error, for a problem."""
    try:
        result = fn(*args)
    except (MvptrError, OSError) as err:
        report(Check("FAIL", name, str(err)))
        raise
    check = result[0] if isinstance(result, tuple) else result
    if check is not None:
        checks.append(check)
        report(check)
    return result


def _corpus_checks(cfg: Config, checks: list[Check], report: Report) -> None:
    data = cfg.data
    for c in corpora(data):
        _, records = _run(checks, report, "captions", check_captions, data, c)
        _, _, missing = _run(checks, report, "features", check_features, data, c, cfg.model.region_feat_dim, records)
        _run(checks, report, "image coverage", check_coverage, data, c, records, missing)
        _run(checks, report, "tags", check_tags, data, c, records)
        _run(checks, report, "phrase cache", check_phrases, data, c, records)


def diagnose(cfg: Config, stages: list[str], tasks: list[str], preset: str | None = None,
             overrides: list[str] = (), report: Report = lambda c: None) -> list[Check]:
    """Check what a run of ``stages`` (pre-training) and ``tasks`` (fine-tuning) reads and writes;
    the tasks whose files ``preset`` / ``overrides`` name are checked too, a problem in them a
    warning. Each check goes to ``report`` as it is made; the first problem that would stop the
    run is raised (after its FAIL line). Returns the checks."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown pre-training stages {unknown} (known: {', '.join(STAGES)})")
    checks: list[Check] = []
    _run(checks, report, "device", check_device, cfg)
    _run(checks, report, "precision", check_precision, cfg, stages, tasks)
    _run(checks, report, "init", init_check, cfg)
    _corpus_checks(cfg, checks, report)
    _, num_phrases = _run(checks, report, "phrase vocab", check_phrase_vocab, cfg.data)
    for task in tasks:
        _run(checks, report, f"task {task}", check_task, cfg, task, True)
    for task in named_tasks(preset, list(overrides)):
        if task not in tasks:
            _run(checks, report, f"task {task}", check_task, cfg, task, False)
    _run(checks, report, "disk", check_disk, cfg, num_phrases, len(stages) + len(tasks))
    return checks
