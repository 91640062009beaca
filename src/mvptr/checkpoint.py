"""Model directories and training state, written atomically.

A model directory holds ``config.json``, ``model.safetensors``, the tokenizer files,
``phrase_vocab.json`` and ``tag_vocab.json``. Optimiser/scheduler/RNG state goes to a
separate ``training_state.pt`` that loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import model_config_from_dict, to_dict
from .model.mvptr import MVPTR
from .text.phrases import PhraseVocab
from .text.tokenizer import load_tokenizer

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


@dataclass
class Bundle:
    model: MVPTR
    tokenizer: object
    phrase_vocab: PhraseVocab
    tag_vocab: list[str]


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place; the old one survives until the new one is there."""
    _fsync_dir(tmp)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def save_model_dir(path: str | Path, bundle: Bundle, training_state: dict | None = None) -> Path:
    final = Path(path)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = bundle.model
    config = {"model": to_dict(model.cfg), "num_phrases": model.num_phrases, "format": "mvptr/1"}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / MODEL_FILE))
    bundle.tokenizer.save_pretrained(str(tmp))
    bundle.phrase_vocab.save(tmp / "phrase_vocab.json")
    (tmp / "tag_vocab.json").write_text(json.dumps(bundle.tag_vocab, indent=1))
    if training_state is not None:
        torch.save(training_state, tmp / STATE_FILE)
    replace_dir(tmp, final)
    return final


def load_model_dir(path: str | Path, device: str = "cpu") -> Bundle:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not found (is {path} an mvptr model directory?)")
    config = json.loads(cfg_file.read_text())
    if config.get("format", "").split("/")[0] != "mvptr":
        raise ValueError(f"{cfg_file}: not an mvptr model directory (for official checkpoints use `mvptr convert official`)")
    state = load_file(str(path / MODEL_FILE), device=device)
    model = MVPTR(model_config_from_dict(config["model"]), config["num_phrases"], state["tag_pieces"])
    load_state_strict(model, state, str(path / MODEL_FILE))
    return Bundle(
        model.to(device),
        load_tokenizer(path),
        PhraseVocab.load(path / "phrase_vocab.json"),
        json.loads((path / "tag_vocab.json").read_text()),
    )


def load_state_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}, shape mismatches {shapes[:10]}"
        )
    model.load_state_dict(state)


def load_training_state(path: str | Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
