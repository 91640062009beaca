"""A new pre-training objective, written here alone (no file under src/ names it), registered
through the public API and switched on in a stage: the command line pre-trains with it, its
loss is logged with the others, weighted as the configuration says, and it moves."""

import json

import pytest

from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError
from mvptr.train.objectives import OBJECTIVES, Objective, register_objective, stage_masking, unregister_objective
from mvptr.train.recipes import pretraining_recipe


def pair_cosine_loss(passes):
    """1 - the cosine of each caption's global embedding with its own image's (both L2-normalised)."""
    text, image = passes.text.global_emb, passes.image.global_emb
    return (1.0 - (text.float() * image.float()).sum(-1)).mean()


PAIR_COSINE = Objective("pair_cosine", pair_cosine_loss, "matched-pair cosine", weight=0.5, merged=False)


@pytest.fixture
def registered():
    register_objective(PAIR_COSINE)
    try:
        yield PAIR_COSINE
    finally:
        unregister_objective(PAIR_COSINE.name)


def test_an_unregistered_name_is_refused_and_a_registered_one_is_accepted(registered):
    unregister_objective("pair_cosine")
    with pytest.raises(ConfigError, match="stage2.objectives.*pair_cosine"):
        load_config("tiny", ["stage2.objectives=[vsc,pair_cosine]"])
    register_objective(PAIR_COSINE)
    cfg = load_config("tiny", ["stage2.objectives=[vsc,pair_cosine]", "stage2.loss_weights.pair_cosine=2"])
    assert cfg.stage2.objectives == ["vsc", "pair_cosine"] and cfg.stage2.loss_weights == {"pair_cosine": 2.0}
    with pytest.raises(ValueError, match="exists already"):
        register_objective(PAIR_COSINE)
    assert stage_masking(cfg.objectives, ["pair_cosine"]).words == 0.0  # it masks nothing


def test_pretraining_through_the_command_line_trains_the_new_objective(registered, world_args, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny", "--stage", "both", *world_args(out),
                 "stage1.max_steps=1", "stage1.batch_size=8", "stage2.max_steps=6", "stage2.batch_size=8",
                 "stage2.objectives=[mcr_v,mcr_s,vsc,pair_cosine]", "stage2.loss_weights.pair_cosine=2"]) == 0
    rows = [json.loads(line) for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    values = [r["pair_cosine"] for r in rows]
    assert all(0.0 <= v <= 2.0 for v in values)  # 1 - cosine
    assert values[-1] != values[0]  # it trains: the encoders move the pairs
    for r in rows:  # the total is the weighted sum: 2 from the configuration, 1 for the built-in ones
        parts = r["mcr_v"] + r["mcr_s"] + r["vsc"] + 2 * r["pair_cosine"]
        assert r["loss"] == pytest.approx(parts, abs=5e-5)
    assert "itm" not in rows[0] and "pair_cosine" in OBJECTIVES
    trained = json.loads((out / "stage2" / "model" / "config.json").read_text())["trained_objectives"]
    assert "pair_cosine" in trained


def test_its_declared_weight_is_the_default(registered):
    recipe = pretraining_recipe("stage2", ["vsc", "pair_cosine"], load_config("tiny").objectives)
    assert recipe.weights == {"pair_cosine": 0.5}  # and 1 for the others
    recipe = pretraining_recipe("stage2", ["pair_cosine"], load_config("tiny").objectives,
                                loss_weights={"pair_cosine": 3.0})
    assert recipe.weights["pair_cosine"] == 3.0
