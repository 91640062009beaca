"""Fine-tuned model directories: an ordinary model directory (the encoders) plus, for a
task with a head, ``task_head.safetensors`` and ``task.json`` (the task and its answers)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..core.config import task_kind
from ..core.fileio import load_json
from ..formats.snli_ve import VE_LABELS
from ..model.task_models import TASK_MODELS, MVPTRForVE, MVPTRForVQA, TaskModel
from ..text.tokenizer import pad_lists
from .hub import resolve_model_dir
from .model_dir import Bundle, load_model_dir, save_model_dir

__all__ = ["HEAD_FILE", "TASK_FILE", "attach_head", "save_task_model", "load_task_model", "load_pretrained",
           "save_bundle"]

HEAD_FILE, TASK_FILE = "task_head.safetensors", "task.json"


def attach_head(bundle: Bundle, task: str, answers: list[str] | None = None, init: bool = True) -> None:
    """Make ``bundle.model`` the task's model (:mod:`mvptr.model.task_models`) with a new head,
    initialised as the paper says: the VQA answer rows from the MLM head, the SNLI-VE pooler
    from the ITM head's. Tasks without a head leave the model as it is."""
    model, kind = bundle.model, task_kind(task)
    if kind == "vqa":
        new = MVPTRForVQA.from_base(model, answers=answers)
        if init:
            pieces = [bundle.tokenizer(a, add_special_tokens=False)["input_ids"] or [bundle.tokenizer.unk_token_id]
                      for a in answers]
            new.task_head.init_from_mlm(new.mlm_head, new.word_rows.detach(), pad_lists(pieces, 0))
    elif kind == "ve":
        new = MVPTRForVE.from_base(model, num_labels=len(VE_LABELS))
        if init:
            new.task_head.pooler.load_state_dict(new.itm_head.pooler.state_dict())
    else:
        return
    bundle.model = new


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


def load_task_model(path: str | Path, device: str = "cpu", trust_pickle: bool = False) -> Bundle:
    """A model directory, as its task's model with the saved head when it has one."""
    path = Path(path)
    bundle = load_model_dir(path, device, trust_pickle)
    if (path / TASK_FILE).exists():
        info = load_json(path / TASK_FILE)
        bundle.task = info
        attach_head(bundle, info["task"], info.get("answers"), init=False)
        if isinstance(bundle.model, tuple(TASK_MODELS.values())):
            bundle.model.task_head.load_state_dict(load_file(str(path / HEAD_FILE), device=device))
    return bundle


def load_pretrained(name_or_path: str | Path, device: str = "cpu", trust_pickle: bool = False, **hub) -> Bundle:
    """The bundle of a model directory or a Hugging Face Hub repo id (``hub``: ``revision``,
    ``cache_dir``, ``local_files_only``, ``token``): a fine-tuned model with its task's head."""
    return load_task_model(resolve_model_dir(name_or_path, **hub), device, trust_pickle)


def save_bundle(path: str | Path, bundle: Bundle) -> Path:
    """``bundle``'s model directory: with its task's head and task.json when it is fine-tuned."""
    if bundle.task is not None:
        return save_task_model(path, bundle, bundle.task)
    if isinstance(bundle.model, TaskModel):  # given a head in memory (attach_head)
        return save_task_model(path, bundle, {"task": type(bundle.model).task, **bundle.model.task_args()})
    return save_model_dir(path, bundle)
