"""The Table 4 command: every row runs, and the report reads each row against the full model."""

import json
import shutil
from dataclasses import replace

import pytest

from mvptr.cli import main
from mvptr.core.errors import ConfigError
from mvptr.demo.ablate import ROWS, budget_overrides, row_config, select_rows
from mvptr.demo.ablation_report import ablation_markdown, ablation_report, verdict
from mvptr.eval.stats import paired_difference
from mvptr.tasks import load_config

pytestmark = pytest.mark.slow


def _run(rsum, vqa, itm=0.3, uni=90.0, relation=50.0):
    return dict(rsum=rsum, uni_rsum=uni, vqa=vqa, grounding_zero_shot=30.0, grounding_finetuned=60.0,
                probe_relation=relation, probe_attribute=90.0, winoground_relation=10.0, winoground_attribute=80.0,
                itm_final_loss=itm, eval_images=10)


def test_a_verdict_needs_an_interval_that_excludes_zero():
    diff = lambda a, b: paired_difference(a, b)  # noqa: E731
    assert verdict(diff([1, 2, 3], [2, 3, 4.1]), 30.0, 40.0) == "reproduces"  # both fall
    assert verdict(diff([3, 4, 5], [2, 3, 4.1]), 30.0, 40.0) == "reversed"
    assert verdict(diff([1, 5, 2], [2, 1, 3]), 30.0, 40.0) == "undecided"
    assert verdict(None, 30.0, 40.0) == verdict(diff([1, 2, 3], [2, 3, 4]), None, 40.0) == "n/a"


def test_the_report_reads_every_row_against_the_full_model_seed_by_seed():
    full = [_run(100.0, 50.0), _run(104.0, 52.0), _run(102.0, 51.0)]
    # rsum 10 below on every seed: decided; vqa up and down: undecided; uni-RSUM the same: no change
    other = [_run(90.0, 55.0, relation=60.0), _run(94.0, 48.0, relation=61.0), _run(92.0, 53.0, itm=0.6, relation=62.0)]
    report = ablation_report({"full": full, "no_mcr_v": other}, (ROWS[0], ROWS[1]))
    row = report["rows"]["no_mcr_v"]
    assert report["rows"]["full"]["ours"]["rsum"]["mean"] == 102.0 and report["seeds"] == 3
    assert row["difference"]["rsum"]["mean"] == -10.0 and row["difference"]["rsum"]["half_width"] == 0.0
    # paper: without MCR^v every figure falls
    assert row["verdict"] == {"rsum": "reproduces", "uni_rsum": "undecided", "vqa": "undecided",
                              "grounding_zero_shot": "undecided", "grounding_finetuned": "undecided",
                              "probe_relation": "higher", "probe_attribute": "undecided",
                              "winoground_relation": "undecided", "winoground_attribute": "undecided"}
    assert report["rows"]["full"]["itm_learned"] and not row["itm_learned"]  # 0.6 on one seed
    md = ablation_markdown({**report, "command": "mvptr ablate", "budget": 1.0})
    assert "| w, c, r, t | MCR^s+VSC+WPG+MLM+ITM | NO (0.30, 0.30, 0.60) | 92.0 ± 5.0 / 498.1 |" in md
    assert "-10.0 ± 0.0 (reproduces)" in md


def test_one_seed_gives_figures_but_decides_nothing():
    report = ablation_report({"full": [_run(100.0, 50.0)], "no_mcr_v": [_run(90.0, 40.0)]}, (ROWS[0], ROWS[1]))
    row = report["rows"]["no_mcr_v"]
    assert row["ours"]["rsum"] == {"mean": 90.0, "half_width": None, "n": 1}
    assert set(row["verdict"].values()) == {"n/a"}


def test_the_budget_scales_every_training_run_and_the_negative_warm_up():
    cfg = load_config("demo", ["stage1.max_steps=0", "stage2.max_steps=0", "finetune.vqa.train.max_steps=400",
                               "finetune.grounding.train.max_steps=30", "stage2.negative_warmup_steps=120"])
    scaled = load_config("demo", budget_overrides(cfg, 0.5))
    assert scaled.stage1.epochs == cfg.stage1.epochs / 2 and scaled.stage2.epochs == cfg.stage2.epochs / 2
    assert scaled.finetune["vqa"].train.max_steps == 200 and scaled.finetune["grounding"].train.max_steps == 15
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
    assert len(report["rows"]["full"]["seeds"]) == 2 and len(report["rows"]["no_phrases"]["seeds"]) == 2
    assert report["eval_images"] == 8 and report["budget"] == 1.0  # the default; the caps given win
    assert report["command"].startswith("mvptr ablate --config tiny --budget 1 ")
    assert report["provenance"]["commit"] and "cores" in report["provenance"]["machine"]
    assert all(isinstance(v, float) for row in report["rows"].values() for v in row["itm_final_loss"])
    assert all(0.0 <= s["probe_relation"] <= 100.0 and 0.0 <= s["winoground_attribute"] <= 100.0
               for row in report["rows"].values() for s in row["seeds"])
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
