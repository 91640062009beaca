"""The training loop: exact resume after an interruption, ablation switches, bad output dirs."""

import json
import sys
from pathlib import Path

import pytest
import torch

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import load_model_dir
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError, OutputDirError
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab
from mvptr.train import recipes
from mvptr.workflows.pretrain import pretrain_stage

pytestmark = pytest.mark.slow


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


def test_a_run_killed_before_its_checkpoint_resumes_with_each_step_logged_once(world_args, tmp_path):
    """A crash left a logged step and a torn line but no checkpoint: a new run into the directory
    is refused, and a resume starts at step 0 with the log cut back to it."""
    cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=2", "stage1.log_every=1")
    (tmp_path / "metrics.jsonl").write_text('{"stage": "stage1", "step": 1, "loss": 1.0}\n{"stage": "stage1", "st')
    with pytest.raises(OutputDirError, match="holds a run already .*--resume"):
        pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, resume=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] != 1.0


def test_a_finished_run_is_replaced_only_when_asked(world_args, tmp_path):
    cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=2", "stage1.log_every=1")
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    first = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(OutputDirError, match="holds a run already"):
        pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == first
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False, overwrite=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # the new run's alone


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
    with pytest.raises(ConfigError, match="stage1.engine = 'jax': expected one of torch, deepspeed"):
        setup(world_args, tmp_path, "stage1.max_steps=1", "stage1.engine=jax")
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


def test_resuming_with_changed_settings_is_refused_and_the_record_kept(world_args, tmp_path, capsys):
    from mvptr.cli import main

    base = ["pretrain", "--config", "tiny", "--stage", "stage1", *world_args(tmp_path), "stage1.max_steps=2"]
    assert main(base) == 0
    recorded = (tmp_path / "config.yaml").read_text()
    for change in ("stage1.lr=5e-4", "stage1.max_steps=3", "stage1.batch_size=8", "seed=1"):
        capsys.readouterr()
        assert main([*base, "--resume", change]) == 2
        err = capsys.readouterr().err
        assert "cannot resume with changed settings" in err and err.count("\n") == 1
        assert (tmp_path / "config.yaml").read_text() == recorded  # the record still tells the truth
    assert main([*base, "--resume"]) == 0  # the same settings resume (nothing left to do)


def test_resuming_with_another_phrase_vocabulary_of_the_same_size_is_refused(world_args, tmp_path):
    cfg, bundle = setup(world_args, tmp_path, "stage1.max_steps=2")
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    vocab = json.loads(Path(cfg.data.phrase_vocab).read_text())
    freq = {("x" + p if i == 0 else p): c for i, (p, c) in enumerate(vocab["freq"].items())}
    other = PhraseVocab(freq, vocab["min_count"])
    assert len(other) == len(bundle.phrase_vocab)
    cfg, fresh = setup(world_args, tmp_path, "stage1.max_steps=2")
    fresh = new_bundle(cfg, other, fresh.tag_vocab)
    with pytest.raises(ConfigError, match="phrase_vocab_sha256"):
        pretrain_stage(cfg, cfg.stage1, fresh, tmp_path, resume=True, progress=False)
