"""``stage.engine=deepspeed`` (ZeRO 2) trains, checkpoints and resumes as the torch engine does.

Needs DeepSpeed (``pip install "mvptr[deepspeed]"``); skipped without it. On a CPU it runs with
``DS_ACCELERATOR=cpu`` and gloo, two processes under torchrun.
"""

import math
import os
import sys

import pytest

pytest.importorskip("deepspeed")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from helpers import _metrics, _per_sample_recipe, _run, _setup, _torchrun, _train  # noqa: E402
from mvptr.checkpoint.bert_init import new_bundle  # noqa: E402
from mvptr.checkpoint.model_dir import load_model_dir, load_training_state  # noqa: E402
from mvptr.core.config import load_config  # noqa: E402
from mvptr.data.builders import training_tag_vocab  # noqa: E402
from mvptr.text.phrases import PhraseVocab  # noqa: E402

pytestmark = pytest.mark.slow

os.environ["DS_ACCELERATOR"] = "cpu"  # inherited by the runs

COMMON = ["--config", "tiny", "stage1.objectives=[vsc]", "stage1.max_steps=4", "stage1.lr=5e-3", "threads=1",
          "stage1.save_every=2"]
DS = ["stage1.engine=deepspeed", "stage1.zero_stage=2"]

# runs the CLI with the losses of one forward pass replaced: "crash" raises there, "nan" makes
# rank 0's losses NaN there
FAULT = """
import os, sys
from mvptr import cli
from mvptr.train import recipes

mode, at, real, calls = sys.argv[1], int(sys.argv[2]), recipes.pretraining_losses, [0]

def faulty(*args, **kwargs):
    calls[0] += 1
    losses = real(*args, **kwargs)
    if calls[0] == at and mode == "crash":
        raise KeyboardInterrupt
    if calls[0] == at and os.environ.get("RANK") == "0":
        return {k: v * float("nan") for k, v in losses.items()}
    return losses

recipes.pretraining_losses = faulty
sys.exit(cli.main(sys.argv[3:]))
"""


def _faulty(tmp_path, port, mode, at):
    script = tmp_path / "faulty.py"
    script.write_text(FAULT)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            str(script), mode, str(at)]


def test_zero_2_trains_checkpoints_and_resumes_like_the_torch_engine(world_args, tmp_path):
    torch_dir, ds_dir, resumed_dir = tmp_path / "torch", tmp_path / "ds", tmp_path / "resumed"
    _run([*_torchrun(2, 29631), "pretrain", "--stage", "stage1", *COMMON, *world_args(torch_dir)], tmp_path)
    _run([*_torchrun(2, 29632), "pretrain", "--stage", "stage1", *COMMON, *DS, *world_args(ds_dir)], tmp_path)

    a, b = _metrics(torch_dir / "stage1/metrics.jsonl"), _metrics(ds_dir / "stage1/metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert abs(ra["vsc"] - rb["vsc"]) < 1e-4, (ra, rb)
        assert ra["lr"] == rb["lr"] and rb["skipped"] == 0

    wa = load_file(torch_dir / "stage1/model/model.safetensors")
    wb = load_file(ds_dir / "stage1/model/model.safetensors")
    cfg = load_config("tiny", [*COMMON[2:], *world_args(torch_dir)])
    w0 = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg)).model.state_dict()
    # the weight decay of the 4 steps (learning-rate factors 1, 3/4, 1/2, 1/4)
    decayed = math.prod(1 - cfg.stage1.lr * f * cfg.stage1.weight_decay for f in (1, 0.75, 0.5, 0.25))
    assert wa.keys() == wb.keys() and all(wb[k].dtype == wa[k].dtype for k in wa)
    for k in wa:
        moved = (wa[k].float() - w0[k].float()).abs().max()
        if moved > 0:
            assert (wa[k].float() - wb[k].float()).abs().max() <= 0.02 * moved + 1e-5, k
        else:
            # trainable without a gradient in any step (the heads of the MCR losses not trained
            # here): torch's AdamW leaves it alone, ZeRO's flat update applies the weight decay
            assert torch.equal(wb[k], w0[k]) or torch.allclose(wb[k], w0[k] * decayed, rtol=0, atol=1e-7), k
    assert (wb["text_proj.weight"] - w0["text_proj.weight"]).abs().max() > 1e-3

    # the model directory is an ordinary one; DeepSpeed's partitioned state sits beside it
    bundle = load_model_dir(ds_dir / "stage1/model")
    assert all(v.dtype != torch.bfloat16 for v in bundle.model.state_dict().values())
    state = load_training_state(ds_dir / "stage1/model")
    assert state["engine"] == "deepspeed" and state["step"] == 4 and state["deepspeed_tag"] == "step4"
    tags = sorted(p.name for p in (ds_dir / "stage1/deepspeed").iterdir() if p.is_dir())
    assert tags == ["step4"]  # the previous one goes once the new one is complete

    # killed in step 3 (after the checkpoint of step 2), then resumed: the weights of the
    # uninterrupted run
    crash = [*_faulty(tmp_path, 29633, "crash", 3), "pretrain", "--stage", "stage1", *COMMON, *DS,
             *world_args(resumed_dir)]
    with pytest.raises(AssertionError):
        _run(crash, tmp_path)
    assert load_training_state(resumed_dir / "stage1/model")["step"] == 2
    _run([*_torchrun(2, 29634), "pretrain", "--stage", "stage1", "--resume", *COMMON, *DS,
          *world_args(resumed_dir)], tmp_path)
    wr = load_file(resumed_dir / "stage1/model/model.safetensors")
    for k in wb:
        assert torch.allclose(wr[k], wb[k], atol=1e-7), k
    c = _metrics(resumed_dir / "stage1/metrics.jsonl")
    assert [r["step"] for r in c] == [1, 2, 3, 4] and [r["vsc"] for r in c] == [r["vsc"] for r in b]

    # the torch engine does not take over a DeepSpeed checkpoint
    with pytest.raises(AssertionError, match="deepspeed engine"):
        _run([sys.executable, "-m", "mvptr", "pretrain", "--stage", "stage1", "--resume", *COMMON,
              "stage1.max_steps=6", *world_args(resumed_dir)], tmp_path)


def test_a_non_finite_step_is_skipped_on_every_process_and_counted(world_args, tmp_path):
    # rank 0's losses are NaN in step 2: the reduced gradients are, and ZeRO skips the step
    _run([*_faulty(tmp_path, 29635, "nan", 2), "pretrain", "--stage", "stage1", *COMMON, *DS,
          "stage1.max_skipped_steps=1", *world_args(tmp_path)], tmp_path)
    log = _metrics(tmp_path / "stage1/metrics.jsonl")
    assert [r["skipped"] for r in log] == [0, 1, 1, 1]
    assert math.isnan(log[1]["vsc"]) and math.isfinite(log[3]["vsc"])
    weights = load_file(tmp_path / "stage1/model/model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_both_stages_run_every_objective_in_bf16(world_args, tmp_path):
    args = ["--config", "tiny", "stage1.max_steps=1", "stage2.max_steps=2", "threads=1", *world_args(tmp_path)]
    for stage in ("stage1", "stage2"):
        args += [f"{stage}.engine=deepspeed", f"{stage}.precision=bf16"]
    _run([*_torchrun(2, 29636), "pretrain", "--stage", "both", *args], tmp_path)
    last = _metrics(tmp_path / "stage2" / "metrics.jsonl")[-1]
    objectives = ("mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg")
    assert set(objectives) <= set(last) and all(math.isfinite(last[k]) for k in objectives)
    assert last["step"] == 2 and last["skipped"] == 0
    # written from the fp32 master weights; what stage 1 froze kept its fp32 values
    cfg = load_config("tiny", args[2:])
    w0 = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg)).model.state_dict()
    w1 = load_model_dir(tmp_path / "stage1" / "model").model.state_dict()
    assert torch.equal(w1["multimodal_encoder.layer.0.attention.self.query.weight"],
                       w0["multimodal_encoder.layer.0.attention.self.query.weight"])
    moved = w1["text_proj.weight"]
    assert moved.dtype == torch.float32 and not torch.equal(moved.bfloat16().float(), moved)
    load_model_dir(tmp_path / "stage2" / "model")


def test_one_process_accumulates_to_the_weights_of_the_whole_batch(world_args, tmp_path):
    # in this process, without a launcher: the engine makes a process group of one
    weights = []
    for accum in (1, 2):
        cfg, bundle, data = _setup(world_args, tmp_path, "model.dropout=0.0")
        _train(cfg, bundle, data, tmp_path / f"accum{accum}", engine="deepspeed", grad_accum_steps=accum)
        weights.append(bundle.model.state_dict())
    a, b = weights
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    cfg, fresh, _ = _setup(world_args, tmp_path, "model.dropout=0.0")
    assert not torch.allclose(fresh.model.state_dict()["text_proj.weight"], a["text_proj.weight"])


def test_fp16_trains_with_the_dynamic_loss_scale(world_args, tmp_path):
    cfg, bundle, data = _setup(world_args, tmp_path)
    before = bundle.model.state_dict()["text_proj.weight"].clone()
    result = _train(cfg, bundle, data, tmp_path, recipe=_per_sample_recipe(), engine="deepspeed", precision="fp16",
                    max_steps=6)
    # the first steps may overflow at the initial scale of 2^16 and be skipped; not all of them
    assert result.skipped_steps < 6
    after = bundle.model.state_dict()["text_proj.weight"]
    assert after.dtype == torch.float32 and not torch.equal(before, after)
    assert all(math.isfinite(v) for v in result.last.values())
