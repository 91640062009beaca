"""The Table 4 command: every row runs, and the report reads each row against the full model."""

import json
import shutil
from dataclasses import replace

import pytest

from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError
from mvptr.demo.ablate import ROWS, ablation_report, budget_overrides, direction, row_config, select_rows

pytestmark = pytest.mark.slow


def test_direction_compares_against_the_noise_and_the_paper():
    assert direction(50.0, 52.0, 1.0, 30.0, 40.0) == "reproduces"  # both fall
    assert direction(54.0, 52.0, 1.0, 30.0, 40.0) == "opposite"
    assert direction(52.5, 52.0, 1.0, 30.0, 40.0) == "within noise"
    assert direction(None, 52.0, 1.0, 30.0, 40.0) == "n/a"


def test_the_report_takes_the_full_models_spread_over_seeds():
    full = [dict(rsum=100.0, uni_rsum=90.0, vqa=50.0, grounding_zero_shot=30.0, grounding_finetuned=60.0,
                 eval_images=10),
            dict(rsum=104.0, uni_rsum=90.0, vqa=52.0, grounding_zero_shot=30.0, grounding_finetuned=62.0,
                 eval_images=10)]
    other = [dict(rsum=90.0, uni_rsum=95.0, vqa=51.0, grounding_zero_shot=20.0, grounding_finetuned=61.0,
                  eval_images=10)]
    report = ablation_report({"full": full, "no_mcr_v": other}, (ROWS[0], ROWS[1]))
    assert report["full_model_spread"]["rsum"] == 4.0
    assert report["rows"]["full"]["ours"]["rsum"] == 102.0
    d = report["rows"]["no_mcr_v"]["direction"]
    # paper: without MCR^v every figure falls
    assert d == {"rsum": "reproduces", "uni_rsum": "opposite", "vqa": "within noise",
                 "grounding_zero_shot": "reproduces", "grounding_finetuned": "within noise"}


def test_the_budget_scales_every_training_run_and_the_negative_warm_up():
    cfg = load_config("demo", ["stage1.max_steps=0", "stage2.max_steps=0", "finetune.vqa.train.max_steps=400",
                               "finetune.grounding.train.max_steps=30", "stage2.negative_warmup_steps=120"])
    scaled = load_config("demo", budget_overrides(cfg, 0.5))
    assert scaled.stage1.epochs == cfg.stage1.epochs / 2 and scaled.stage2.epochs == cfg.stage2.epochs / 2
    assert scaled.finetune.vqa.train.max_steps == 200 and scaled.finetune.grounding.train.max_steps == 15
    assert scaled.stage2.negative_warmup_steps == 60
    # a capped stage is scaled by its cap; a budget of 1 changes nothing
    capped = load_config("demo", ["stage1.max_steps=9"])
    assert "stage1.max_steps=4" in budget_overrides(capped, 0.5)
    assert load_config("demo", budget_overrides(cfg, 1.0)) == cfg
    for share in (0.0, -1.0, 1.5):
        with pytest.raises(ConfigError, match="--budget"):
            budget_overrides(cfg, share)


def test_the_merged_row_changes_the_model_and_vsc_only(tmp_path):
    """Table 4's MergAttn row removes the uni-modal encoders and VSC, nothing else: the same two
    stages, budget, warm-up and learning rates as every other row."""
    merged = {r.key: r for r in ROWS}["merged_attention"]
    assert merged.overrides == ("model.merged_attention=true", "objectives.vsc=false")
    overrides = budget_overrides(load_config("demo", []), 0.5)
    full = row_config("demo", overrides, ROWS[0], 0, tmp_path / "full")
    row = row_config("demo", overrides, merged, 0, tmp_path / "merged")
    assert row.model.merged_attention and row.model == replace(full.model, merged_attention=True)
    assert row.objectives == replace(full.objectives, vsc=False)  # the negative warm-up included
    assert row.stage1 == full.stage1 and row.stage2 == full.stage2
    assert row.stage2.cross_modal_lr_scale == 5.0


def test_unknown_rows_are_an_error():
    with pytest.raises(ConfigError, match="unknown ablation rows"):
        select_rows(["full", "no_such_row"])
    assert [r.key for r in select_rows(["no_tags"])] == ["full", "no_tags"]


def test_ablate_runs_rows_end_to_end_and_resumes(world, tmp_path, capsys):
    w = tmp_path / "world"
    shutil.copytree(world, w)  # the demo's task files are written into the world's directory
    args = ["ablate", "--config", "tiny", "--rows", "no_phrases,merged_attention", "--seeds", "2",
            "--out", str(tmp_path / "ab"),
            f"out_dir={tmp_path}/runs", f"demo.data_dir={w}", "demo.n_train=96", "demo.n_val=8", "demo.n_test=24",
            f"data.captions={w}/captions.json",
            f"data.features={w}/features.tsv", f"data.predictions={w}/predictions.tsv",
            f"data.phrase_cache={w}/phrases/phrase_cache.jsonl", f"data.phrase_vocab={w}/phrases/phrase_vocab.json",
            f"eval.entities_dir={w}/flickr30k_entities", "eval.max_images=8", "stage1.max_steps=2",
            "stage2.max_steps=2", "finetune.vqa.train.max_steps=1", "finetune.grounding.train.max_steps=1"]
    assert main(args) == 0
    report = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert list(report["rows"]) == ["full", "no_phrases", "merged_attention"]
    assert len(report["rows"]["full"]["seeds"]) == 2 and len(report["rows"]["no_phrases"]["seeds"]) == 1
    assert report["eval_images"] == 8 and report["budget"] == 0.5  # the default; the caps given win
    assert report["command"].startswith("mvptr ablate --config tiny --budget 0.5 ")
    assert report["rows"]["merged_attention"]["ours"]["uni_rsum"] is None  # no uni-modal encoders to rank with
    merged_run = tmp_path / "ab" / "merged_attention" / "seed0"  # both stages, as every row
    assert (merged_run / "stage1" / "model").is_dir() and (merged_run / "stage2" / "model").is_dir()
    for s in [s for row in report["rows"].values() for s in row["seeds"]]:
        assert 0.0 <= s["rsum"] <= 600.0 and 0.0 <= s["vqa"] <= 100.0 and 0.0 <= s["grounding_finetuned"] <= 100.0
    assert "| w, r, t | MCR^v+VSC+MLM+ITM |" in (tmp_path / "ab" / "ablation.md").read_text()
    # a second run reuses every finished row
    done = tmp_path / "ab" / "full" / "seed0" / "result.json"
    before = done.stat().st_mtime_ns
    assert main(args) == 0
    assert done.stat().st_mtime_ns == before
    # but not one that ran with other settings
    assert main([*args, "stage2.lr=0.0005"]) == 2
    assert "finished with other settings (stage2.lr)" in capsys.readouterr().err
    assert done.stat().st_mtime_ns == before
