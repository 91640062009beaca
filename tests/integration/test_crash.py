"""Crash safety: a training process killed with SIGKILL resumes from its last checkpoint and
ends with exactly the weights of a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mvptr.checkpoint.model_dir import load_model_dir, load_training_state
from mvptr.cli import main

pytestmark = pytest.mark.slow

STEPS = ["stage1.max_steps=2", "stage2.max_steps=6", "stage1.batch_size=8", "stage2.batch_size=8",
         "stage1.save_every=2", "stage2.save_every=2"]


def run_args(world_args, out, *extra):
    return ["pretrain", "--config", "tiny", "--stage", "both", *extra, *world_args(out), *STEPS]


def test_a_run_killed_mid_training_resumes_to_the_same_weights(world_args, tmp_path):
    # the uninterrupted run
    assert main(run_args(world_args, tmp_path / "ref")) == 0
    reference = load_model_dir(tmp_path / "ref" / "stage2" / "model").model.state_dict()
    total = load_training_state(tmp_path / "ref" / "stage2" / "model")["step"]

    # the same run in another process, killed once stage 2 has written a checkpoint
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mvptr", *run_args(world_args, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "stage2" / "model" / "training_state.pt"
    deadline = time.time() + 900  # a bound for a stuck run, not a timing: a loaded machine may take minutes
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert state.exists(), "the run wrote no stage-2 checkpoint before it ended or the deadline passed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    step = load_training_state(out / "stage2" / "model")["step"]
    assert 0 < step < total, "the process was to be killed in the middle of stage 2"

    assert main(run_args(world_args, out, "--resume")) == 0
    resumed = load_model_dir(out / "stage2" / "model").model.state_dict()
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    # every step logged once, as in the run that was never interrupted, whatever the kill cut
    def steps(run, stage):
        return [json.loads(line)["step"] for line in (run / stage / "metrics.jsonl").read_text().splitlines()]

    for stage in ("stage1", "stage2"):
        assert steps(out, stage) == steps(tmp_path / "ref", stage), stage


def test_a_full_disk_fails_before_the_first_step(world_args, tmp_path, monkeypatch, capsys):
    import re
    import shutil

    from mvptr.train import run_dir

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda path: usage._replace(free=5 * 2**20))
    assert main(run_args(world_args, tmp_path / "out")) == 2  # the user's to fix: one line, no traceback
    assert re.search(r"has only 5 MiB free; its files need about \d+ MiB", capsys.readouterr().err)
    assert not (tmp_path / "out" / "stage1" / "metrics.jsonl").exists()
