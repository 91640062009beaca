"""The training loop: exact resume after an interruption, ablation switches, bad output dirs."""

import json
import sys

import pytest
import torch

from mvptr.checkpoint import load_model_dir
from mvptr.config import load_config
from mvptr.pipeline import new_bundle, pretrain_stage, training_tag_vocab
from mvptr.text.phrases import PhraseVocab
from mvptr.train import recipes


def setup(world_args, out, *extra):
    cfg = load_config("tiny", world_args(out) + ["stage2.epochs=1", "stage2.save_every=2", *extra])
    return cfg, new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))


def test_an_interrupted_run_resumes_to_the_same_weights(world_args, tmp_path, monkeypatch):
    cfg, bundle = setup(world_args, tmp_path / "a")
    pretrain_stage(cfg, cfg.stage2, bundle, tmp_path / "a", progress=False)
    reference = bundle.model.state_dict()

    cfg, bundle = setup(world_args, tmp_path / "b")
    real = recipes.pretraining_losses
    calls = {"n": 0}

    def crash_at_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recipes, "pretraining_losses", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain_stage(cfg, cfg.stage2, bundle, tmp_path / "b", progress=False)
    monkeypatch.setattr(recipes, "pretraining_losses", real)

    cfg, fresh = setup(world_args, tmp_path / "b")  # a new process would start from scratch
    result = pretrain_stage(cfg, cfg.stage2, fresh, tmp_path / "b", resume=True, progress=False)
    assert result.steps == 96 * 5 // 16 - 2  # the first two steps came from the checkpoint
    resumed = fresh.model.state_dict()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    saved = load_model_dir(tmp_path / "b" / "model").model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in reference.items())


def test_switching_off_phrases_and_tags_removes_their_objectives(world_args, tmp_path):
    cfg, bundle = setup(world_args, tmp_path, "objectives.use_phrases=false", "objectives.use_tags=false",
                        "stage2.max_steps=2")
    pretrain_stage(cfg, cfg.stage2, bundle, tmp_path, progress=False)
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"vsc", "itm", "mlm"} <= set(last) and not {"mcr_v", "mcr_s", "wpg"} & set(last)


def test_a_torn_metrics_line_from_a_crash_is_cut_before_the_next_one(world_args, tmp_path):
    cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=2", "stage1.log_every=1")
    (tmp_path / "metrics.jsonl").write_text('{"stage": "stage1", "step": 1, "loss": 1.0}\n{"stage": "stage1", "st')
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 2]


def test_stage1_optimises_only_the_uni_modal_side(world_args, tmp_path):
    cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=2")
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    after = bundle.model.state_dict()
    cross, text = "multimodal_encoder.layer.0.output.dense.weight", "text_encoder.layer.0.output.dense.weight"
    assert torch.equal(before[cross], after[cross])
    assert not torch.equal(before[text], after[text])


def test_compiled_layers_train_to_the_eager_weights(world_args, tmp_path):
    weights = []
    for backend in ("none", "eager"):  # dynamo traces every layer; the eager backend runs the graphs
        cfg, bundle = setup(world_args, tmp_path / backend, "stage2.max_steps=2", f"model.compile={backend}")
        pretrain_stage(cfg, cfg.stage2, bundle, tmp_path / backend, progress=False)
        weights.append(bundle.model.state_dict())
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])


def test_an_unwritable_output_directory_fails_before_training(world_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg, bundle = setup(world_args, blocker / "out", "stage1.max_steps=2")
    with pytest.raises(OSError, match="cannot write to output directory"):
        pretrain_stage(cfg, cfg.stage1, bundle, blocker / "out", progress=False)


def test_an_engine_is_torch_or_deepspeed_and_deepspeed_says_how_to_install_it(world_args, tmp_path):
    cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=1", "stage1.engine=jax")
    with pytest.raises(ValueError, match="unknown engine 'jax'"):
        pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=1", "stage1.engine=deepspeed")
        with pytest.raises(ImportError, match=r'pip install "mvptr\[deepspeed\]"'):
            pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_glibc_takes_the_setting_that_keeps_freed_gradients_for_reuse():
    from mvptr.train.trainer import reuse_freed_cpu_memory

    # whether the pages then stay is the kernel's business (a VM's memory reclaim may take
    # them back), so only the allocator's acceptance is tested; PERFORMANCE.md measures speed
    assert reuse_freed_cpu_memory()
