"""Fine-tuned model directories: an ordinary model directory (the encoders) plus, for a
task with a head, ``task_head.safetensors`` and ``task.json`` (the task and its answers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..core.fileio import load_json
from .hub import resolve_model_dir
from .model_dir import Bundle, load_model_dir, save_model_dir

__all__ = ["HEAD_FILE", "TASK_FILE", "save_task_model", "read_task_model", "save_bundle"]

HEAD_FILE, TASK_FILE = "task_head.safetensors", "task.json"


def save_task_model(path: str | Path, bundle: Bundle, info: dict) -> Path:
    """The encoders as a model directory, the head (if any) beside them, and ``task.json``."""
    state = bundle.model.state_dict()
    head = {k.removeprefix("task_head."): v for k, v in state.items() if k.startswith("task_head.")}

    def add_task_files(tmp: Path) -> None:  # inside the directory before it is swapped in
        if head:
            save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(tmp / HEAD_FILE))
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=1))

    encoders = {k: v for k, v in state.items() if not k.startswith("task_head.")}
    return save_model_dir(path, bundle, extra=add_task_files, weights=encoders)


def read_task_model(path: str | Path, device: str = "cpu", attach: Callable[[Bundle, dict], None] | None = None,
                    trust_pickle: bool = False, **hub) -> Bundle:
    """A model directory or a Hugging Face Hub repo id (``hub``: ``revision``, ``cache_dir``,
    ``local_files_only``, ``token``); with ``task.json``, ``attach(bundle, info)`` makes the model
    its task's (the table of tasks knows how: ``mvptr.tasks.load_task_model``) and the saved
    head, when there is one, is loaded into it."""
    path = resolve_model_dir(path, **hub)
    bundle = load_model_dir(path, device, trust_pickle)
    if (path / TASK_FILE).exists() and attach is not None:
        bundle.task = load_json(path / TASK_FILE)
        attach(bundle, bundle.task)
        if hasattr(bundle.model, "task_head"):
            bundle.model.task_head.load_state_dict(load_file(str(path / HEAD_FILE), device=device))
    return bundle


def save_bundle(path: str | Path, bundle: Bundle) -> Path:
    """``bundle``'s model directory: with its task's head and task.json when it is fine-tuned."""
    if bundle.task is not None:
        return save_task_model(path, bundle, bundle.task)
    return save_model_dir(path, bundle)
