"""A training step whose loss is not finite is skipped, shown, and past stage.max_skipped_steps
stops the run with one error naming the step and the samples of its batch."""

import re

import pytest
from torch.utils.data import Dataset

from helpers import _setup, _train
from mvptr.cli.common import skipped_steps_note
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError, FormatError
from mvptr.train.recipes import pretraining_recipe
from mvptr.train.trainer import StepBatches


class HugeFeatures(Dataset):
    """``data`` with the region features of sample ``bad`` set to 1e30: finite, yet the loss is NaN."""

    def __init__(self, data, bad: int):
        self.data, self.bad = data, bad

    def __len__(self):
        return len(self.data)

    def describe(self, i):
        return self.data.describe(i)

    def __getitem__(self, i):
        item = self.data[i]
        return {**item, "region_feats": item["region_feats"] * 0 + 1e30} if i == self.bad else item


def _spoiled(world_args, tmp_path):
    cfg, bundle, data = _setup(world_args, tmp_path)
    first = next(iter(StepBatches(len(data), 16, 0, 0, 3)))[0][2]  # the first sample of step 1
    recipe = pretraining_recipe("stage1", list(cfg.stage1.objectives), cfg.objectives)
    return cfg, bundle, HugeFeatures(data, first), recipe, data.records[first]


def test_a_step_whose_loss_is_not_finite_stops_the_run_naming_the_step_and_the_image(world_args, tmp_path):
    cfg, bundle, data, recipe, record = _spoiled(world_args, tmp_path)
    with pytest.raises(FormatError) as err:
        _train(cfg, bundle, data, tmp_path, recipe=recipe, max_steps=3)
    message = str(err.value)
    assert err.value.reason == "loss not finite"
    assert message.startswith("stage1 step 1: the loss is not finite, 1 step skipped"), message
    assert f"image {record.image_id}, caption {record.sent_id}" in message
    assert "max_skipped_steps" in message and "\n" not in message


def test_with_max_skipped_steps_1_the_run_goes_on_and_reports_the_step(world_args, tmp_path):
    cfg, bundle, data, recipe, _ = _spoiled(world_args, tmp_path)
    result = _train(cfg, bundle, data, tmp_path, recipe=recipe, max_steps=3, max_skipped_steps=1)
    assert result.steps == 3 and result.skipped_steps == 1
    assert skipped_steps_note(result) == ", 1 step skipped (loss not finite)"


def test_the_second_skipped_step_stops_a_run_that_allows_one(world_args, tmp_path):
    from helpers import _per_sample_recipe

    cfg, bundle, data = _setup(world_args, tmp_path)
    calls = {"n": 0}
    plain = _per_sample_recipe()

    def loss(model, batch, generator):  # NaN on steps 2 and 3
        calls["n"] += 1
        out = plain.loss(model, batch, generator)
        return {k: v * float("nan") for k, v in out.items()} if calls["n"] >= 2 else out

    with pytest.raises(FormatError, match=re.escape("stage1 step 3: the loss is not finite, 2 steps skipped")):
        _train(cfg, bundle, data, tmp_path, recipe=type(plain)("nan_twice", loss), max_steps=4, max_skipped_steps=1)


def test_max_skipped_steps_is_not_negative(world_args, tmp_path):
    with pytest.raises(ConfigError, match="stage1.max_skipped_steps"):
        load_config("tiny", world_args(tmp_path) + ["stage1.max_skipped_steps=-1"])
