"""Settings no run can use are refused when the config is built, naming the key."""

import pytest

from mvptr.cli import main
from mvptr.core.errors import ConfigError
from mvptr.tasks import load_config  # the tasks' sections checked as well

BAD = [
    ("stage1.batch_size=0", "stage1.batch_size"),
    ("stage2.batch_size=-4", "stage2.batch_size"),
    ("stage1.max_steps=-3", "stage1.max_steps"),
    ("stage1.epochs=0", "stage1.epochs"),
    ("stage2.lr=0", "stage2.lr"),
    ("stage1.log_every=0", "stage1.log_every"),
    ("stage1.grad_accum_steps=0", "stage1.grad_accum_steps"),
    ("stage1.grad_accum_steps=5", "stage1.grad_accum_steps"),  # does not divide the batch
    ("stage1.precision=fp8", "stage1.precision"),
    ("stage1.warmup_ratio=1.5", "stage1.warmup_ratio"),
    ("stage1.grad_clip=0", "stage1.grad_clip"),
    ("stage1.zero_stage=3", "stage1.zero_stage"),
    ("stage2.objectives=[itm,contrastive]", "stage2.objectives"),
    ("stage2.negative_warmup_steps=-1", "stage2.negative_warmup_steps"),
    ("stage2.loss_weights.contrastive=1", "stage2.loss_weights.contrastive"),
    ("finetune.retrieval.train.loss_weights.itm=-1", "finetune.retrieval.train.loss_weights.itm"),
    ("finetune.vqa.train.batch_size=0", "finetune.vqa.train.batch_size"),
    ("finetune.ve.max_eval=-1", "finetune.ve.max_eval"),
    ("threads=-1", "threads"),
    ("device=gpu", "device"),
    ("data.max_regions=0", "data.max_regions"),
    ("data.max_tokens=2", "data.max_tokens"),
    ("data.max_tags=-1", "data.max_tags"),
    ("model.num_heads=5", "model.num_heads"),
    ("model.wpg_layer=7", "model.wpg_layer"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.global_pool=max", "model.global_pool"),
    ("objectives.tag_mask_prob=1.2", "objectives.tag_mask_prob"),
    ("objectives.negative_sampling=random", "objectives.negative_sampling"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.k_c=-1", "eval.k_c"),
    ("eval.rerank_score=sim", "eval.rerank_score"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override,key", BAD)
def test_a_setting_no_run_can_use_is_an_error_naming_its_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')} = "):
        load_config("tiny", [override])


def test_the_presets_are_valid():
    for preset in ("tiny", "demo", "base"):
        load_config(preset)


def test_the_command_line_prints_one_line_and_exits_2(capsys):
    assert main(["pretrain", "--config", "tiny", "stage1.batch_size=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stage1.batch_size = 0" in err
