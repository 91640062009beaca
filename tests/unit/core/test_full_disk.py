"""A full disk (ENOSPC) at a write: one line ``mvptr: <path>: no space left on the device; ...``
and exit status 2, and what was written before stays whole."""

import builtins
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mvptr.checkpoint.model_dir as model_dir
from mvptr.cli import main

pytestmark = pytest.mark.slow  # the tiny demo world, and one pre-training step


def _full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")  # as a write to an open file raises it: no file name


class _FullFile:
    """An open file whose writes fail as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise _full()

    writelines = write

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(monkeypatch, under: Path, files: bool = True) -> None:
    """Every write under ``under`` fails with ENOSPC: files opened for writing, numpy and
    safetensors saves, torch.save (``files=False``: only the weights' writers)."""
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        inside = isinstance(file, (str, Path)) and str(Path(file).resolve()).startswith(str(under.resolve()))
        return _FullFile(f) if inside and any(c in mode for c in "wax+") else f

    def fail(*args, **kwargs):
        raise _full()

    if files:
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(np, "save", fail)
    monkeypatch.setattr(model_dir, "save_file", fail)
    monkeypatch.setattr(torch, "save", fail)


def one_line(capsys, rc, where) -> str:
    err = capsys.readouterr().err
    segments = [x for line in err.splitlines() for x in line.split("\r")]
    # a progress bar left without its newline runs into the next line
    lines = [x[x.index("mvptr: "):] if "mvptr: " in x else x for x in segments if x.strip()]
    lines = [x for x in lines if "%|" not in x]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("mvptr: ") and "no space left on the device" in lines[0], err
    assert str(where) in lines[0], err
    return lines[0]


def test_prepare_phrases_on_a_full_disk_keeps_the_old_vocabulary(world, tmp_path, monkeypatch, capsys):
    out = shutil.copytree(world / "phrases", tmp_path / "phrases")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full_disk(monkeypatch, tmp_path)
    rc = main(["prepare", "phrases", "--captions", str(world / "captions.json"), "--out", str(out),
               "--min-count", "1"])
    monkeypatch.undo()
    one_line(capsys, rc, out)
    assert (out / "phrase_vocab.json").read_bytes() == before["phrase_vocab.json"]
    assert all(json.loads(line) for line in (out / "phrase_cache.jsonl").read_text().splitlines() if line)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_features_convert_on_a_full_disk_leaves_no_store(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    full_disk(monkeypatch, tmp_path)
    rc = main(["features", "convert", "--features", str(world / "features.tsv"), "--predictions",
               str(world / "predictions.tsv"), "--out", str(out)])
    monkeypatch.undo()
    one_line(capsys, rc, out)
    assert not out.exists() and not list(tmp_path.glob("store.tmp*"))


def test_prepare_demo_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    full_disk(monkeypatch, tmp_path)
    rc = main(["prepare", "demo", "--out", str(out), "--n-train", "4", "--n-val", "1", "--n-test", "2"])
    monkeypatch.undo()
    one_line(capsys, rc, out)


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_half_model(world_args, tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, tmp_path, files=False)
    rc = main(["pretrain", "--config", "tiny", "--stage", "stage1", *world_args(tmp_path), "stage1.max_steps=1",
               "stage1.batch_size=2"])
    monkeypatch.undo()
    one_line(capsys, rc, tmp_path / "stage1" / "model")
    run = tmp_path / "stage1"
    assert not (run / "model").exists() and not list(run.glob("model.tmp*"))
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line)


def test_a_full_disk_inside_torch_save_is_one_line(world_args, tmp_path, monkeypatch, capsys):
    """torch's own file writer turns a failed write into a RuntimeError; the training state is
    written through a Python file, whose failed write is the OSError the one line is made from."""
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FullFile(f) if str(file).endswith("training_state.pt") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", open_)  # torch.save itself is the real one
    rc = main(["pretrain", "--config", "tiny", "--stage", "stage1", *world_args(tmp_path), "stage1.max_steps=1",
               "stage1.batch_size=2"])
    monkeypatch.undo()
    line = one_line(capsys, rc, tmp_path / "stage1")
    assert "training_state.pt" in line
    assert not (tmp_path / "stage1" / "model").exists() and not list((tmp_path / "stage1").glob("model.tmp*"))
