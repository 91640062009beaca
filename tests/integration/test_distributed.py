"""Several processes, mixed precision, accumulation and checkpointing give the same training."""

import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import _metrics, _per_sample_recipe, _run, _setup, _torchrun, _train
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.core.config import load_config
from mvptr.core.distributed import shard
from mvptr.core.precision import resolve as resolve_precision
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab
from mvptr.train.trainer import StepBatches

pytestmark = pytest.mark.slow


def _state(run):
    return torch.load(run / "stage1/model/training_state.pt", weights_only=True)["optimizer"]["state"]


def test_two_processes_with_global_vsc_train_like_one_process_with_the_whole_batch(world_args, tmp_path):
    # Adam moves every weight by about lr whatever its gradient's size, so where a gradient is
    # zero but for rounding (the key biases: softmax ignores a shift common to a row) the two runs
    # step in random directions, and the weights part by more than rounding elsewhere as well.
    # What must agree is what the processes compute: the losses, and the gradients, taken at
    # weights a tiny learning rate keeps equal; Adam's first moment holds their running mean.
    common = ["--config", "tiny", "stage1.objectives=[vsc]", "stage1.max_steps=4", "threads=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "mvptr", "pretrain", "--stage", "stage1", *common, "stage1.lr=1e-8",
          *world_args(one)], tmp_path)
    _run([*_torchrun(2, 29611), "pretrain", "--stage", "stage1", *common, "stage1.lr=1e-8", *world_args(two)],
         tmp_path)

    a, b = _metrics(one / "stage1" / "metrics.jsonl"), _metrics(two / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        # 16 in-batch candidates, not 8: the second process's share is among the negatives
        assert abs(ra["vsc"] - rb["vsc"]) < 1e-5, (ra, rb)
    assert abs(a[0]["vsc"] - math.log(16)) < 0.05
    ma, mb = {i: s["exp_avg"] for i, s in _state(one).items()}, {i: s["exp_avg"] for i, s in _state(two).items()}
    assert ma.keys() == mb.keys() and len(ma) > 10
    largest = max(m.abs().max() for m in ma.values())
    assert largest > 1e-4  # the gradients are not all zero
    for i in ma:
        # float32 sums in another order, where terms cancel (an embedding row gathers every use of
        # its word), differ by ~1e-4 of a tensor's largest entry; a real fault (a process's share
        # left out, a sum for a mean, negatives from one process) moves gradients by tens of percent
        assert (ma[i] - mb[i]).abs().max() <= 1e-2 * ma[i].abs().max() + 1e-5 * largest, i

    # the optimizer state sharded across the two processes (ZeRO 1) changes nothing
    two_moving, zero = tmp_path / "two_moving", tmp_path / "zero"
    _run([*_torchrun(2, 29613), "pretrain", "--stage", "stage1", *common, "stage1.lr=5e-3",
          *world_args(two_moving)], tmp_path)
    _run([*_torchrun(2, 29615), "pretrain", "--stage", "stage1", *common, "stage1.lr=5e-3",
          "stage1.shard_optimizer=true", *world_args(zero)], tmp_path)
    wz = load_file(zero / "stage1/model/model.safetensors")
    wb = load_file(two_moving / "stage1/model/model.safetensors")
    cfg = load_config("tiny", [*common[2:], *world_args(one)])
    w0 = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg)).model.state_dict()
    assert (wb["text_proj.weight"] - w0["text_proj.weight"]).abs().max() > 1e-3
    assert all(torch.allclose(wz[k], wb[k], atol=1e-6) for k in wb)
    sz, sb = _state(zero), _state(two_moving)
    assert sz.keys() == sb.keys() and all(torch.allclose(sz[i]["exp_avg"], sb[i]["exp_avg"], atol=1e-9) for i in sb)


def test_two_processes_run_every_objective_of_stage_2(world_args, tmp_path):
    args = ["--config", "tiny", "stage1.max_steps=1", "stage2.max_steps=2", "threads=1", *world_args(tmp_path)]
    _run([*_torchrun(2, 29612), "pretrain", "--stage", "both", *args], tmp_path)
    last = _metrics(tmp_path / "stage2" / "metrics.jsonl")[-1]
    assert {"mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"} <= set(last)
    assert all(math.isfinite(last[k]) for k in ("mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"))
    assert last["skipped"] == 0

    # evaluation sharded over two processes (re-ranked pairs, grounding examples) = one process
    model = tmp_path / "stage2" / "model"
    _run([sys.executable, "-m", "mvptr", "evaluate", "--model", str(model), *args], tmp_path)
    alone = json.loads((tmp_path / "stage2" / "eval.json").read_text())
    _run([*_torchrun(2, 29614), "evaluate", "--model", str(model), *args], tmp_path)
    sharded = json.loads((tmp_path / "stage2" / "eval.json").read_text())
    assert sharded["retrieval"] == alone["retrieval"] and sharded["grounding"] == alone["grounding"]
    assert alone["retrieval"]["pairs_scored"] > 0 and alone["grounding"]["mentions"] > 0


def test_shards_cover_every_item_once():
    from mvptr.core.distributed import Dist

    for n in (0, 1, 7, 8, 9):
        for world in (1, 2, 3):
            parts = [list(range(n))[shard(n, Dist(r, world))] for r in range(world)]
            assert sum(parts, []) == list(range(n))


def test_step_batches_cut_a_step_into_rank_and_accumulation_shares():
    whole = [b for b in StepBatches(40, 8, seed=3, start=0, total=5)]
    parts = [list(StepBatches(40, 8, seed=3, start=0, total=5, rank=r, world=2, accum=2)) for r in (0, 1)]
    for step in range(5):
        rebuilt = []
        for micro in range(2):
            for rank in range(2):
                rebuilt += [i for _, _, i in parts[rank][step * 2 + micro]]
        assert rebuilt == [i for _, _, i in whole[step]]
    with pytest.raises(ValueError, match="not a multiple"):
        StepBatches(40, 6, seed=0, start=0, total=1, world=4)


def test_gradient_accumulation_gives_the_weights_of_the_whole_batch(world_args, tmp_path):
    # dropout off: the two runs draw dropout masks per pass, which differ between 1 and 2 passes
    cfg, whole, data = _setup(world_args, tmp_path, "model.dropout=0.0")
    _train(cfg, whole, data, tmp_path / "a")
    cfg, halves, data = _setup(world_args, tmp_path, "model.dropout=0.0")
    _train(cfg, halves, data, tmp_path / "b", grad_accum_steps=2)
    a, b = whole.model.state_dict(), halves.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    cfg, fresh, _ = _setup(world_args, tmp_path, "model.dropout=0.0")
    assert not torch.allclose(fresh.model.state_dict()["text_proj.weight"], a["text_proj.weight"])


def test_activation_checkpointing_changes_memory_not_the_result(world_args, tmp_path):
    cfg, plain, data = _setup(world_args, tmp_path)
    _train(cfg, plain, data, tmp_path / "a")
    cfg, ckpt, data = _setup(world_args, tmp_path, "model.activation_checkpointing=true")
    _train(cfg, ckpt, data, tmp_path / "b")
    a, b = plain.model.state_dict(), ckpt.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(world_args, tmp_path, precision):
    cfg, bundle, data = _setup(world_args, tmp_path)
    before = bundle.model.state_dict()["text_proj.weight"].clone()
    result = _train(cfg, bundle, data, tmp_path, precision=precision, max_steps=4)
    # fp16's loss scaler may skip a first overflowing step; it must not skip them all
    assert result.skipped_steps < 4
    assert not torch.equal(before, bundle.model.state_dict()["text_proj.weight"])
    assert all(math.isfinite(v) for v in result.last.values())


def test_auto_precision_trains_in_the_one_this_machine_has(world_args, tmp_path):
    cfg, bundle, data = _setup(world_args, tmp_path)
    result = _train(cfg, bundle, data, tmp_path, precision="auto", max_steps=2)
    assert result.precision == resolve_precision("auto", "cpu")
    assert all(math.isfinite(v) for v in result.last.values())


def test_a_non_finite_step_is_skipped_and_counted(world_args, tmp_path):
    cfg, bundle, data = _setup(world_args, tmp_path)
    result = _train(cfg, bundle, data, tmp_path, recipe=_per_sample_recipe(nan_at_step=2), max_steps=3,
                    max_skipped_steps=1)
    assert result.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in bundle.model.state_dict().values())
    log = _metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in log] == [0, 1, 1]
