"""A tiny world through the whole pipeline: prepare, phrases, both stages, evaluation, report."""

import json

import pytest

from mvptr.app.search import SearchIndex
from mvptr.cli import main
from mvptr.core.config import load_config

pytestmark = pytest.mark.slow


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_stage_pretraining_losses_fall_and_the_demo_report_is_written(world_args, tmp_path):
    out = tmp_path / "run"
    args = world_args(out) + ["stage1.epochs=4", "stage2.epochs=4", "threads=2"]
    assert main(["demo", "--config", "tiny", *args]) == 0

    stages = (("stage1", ["mcr_v", "mcr_s", "vsc"]), ("stage2", ["mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"]))
    for stage, names in stages:
        rows = read_metrics(out / stage / "metrics.jsonl")
        assert set(names) <= set(rows[0]), f"{stage} logs {sorted(rows[0])}"
        first = sum(r["loss"] for r in rows[:5]) / 5
        last = sum(r["loss"] for r in rows[-5:]) / 5
        assert last < first, f"{stage}: loss went from {first:.3f} to {last:.3f}"
        assert (out / stage / "model" / "model.safetensors").exists()

    report = json.loads((out / "report.json").read_text())
    keys = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}
    assert list(report["retrieval"]) == ["pretrained", "random_init", "chance"]
    # the models before pre-training rank uni-modally only (an untrained ITM head re-ranks at random)
    assert set(report["retrieval"]["random_init"]) == {"uni"}
    for model in report["retrieval"]:
        for kind in ("uni", "rerank") if model != "random_init" else ("uni",):
            r = report["retrieval"][model][kind]
            assert set(r) == keys and all(0 <= r[k] <= 100 for k in keys - {"rsum"})
        assert 0 <= report["grounding"][model]["acc"] <= 100
    assert report["seconds"]["stage1"] > 0
    # downstream: every task fine-tuned from the pre-trained model, and easy-VQA with its baselines
    assert {"acc", "majority"} <= set(report["vqa"]) and 0 <= report["ve"]["acc"] <= 100
    assert set(report["ve"]["per_group"]) == {"existence", "relation", "property"}
    assert {"zero_shot", "finetuned"} <= set(report["grounding"])
    assert {"uni", "rerank"} <= set(report["retrieval_finetuned"])
    assert {"acc", "majority", "question_only"} <= set(report["easyvqa"])
    assert all(f"finetune_{t}" in report["seconds"] for t in ("retrieval", "vqa", "ve", "grounding", "easyvqa"))
    assert "| easy-VQA (test) | VQA accuracy |" in (out / "report.md").read_text()
    assert "| pretrained | rerank |" in (out / "report.md").read_text()
    # the compositional probes of the pre-trained model, by ITM and by cosine
    probes = report["probes"]
    assert probes["counts"]["winoground_relation"] == probes["counts"]["winoground_attribute"] == 8
    for scorer in ("itm", "cosine"):
        assert {"relation_swap", "attribute_swap", "word_shuffle", "winoground_relation"} <= set(probes[scorer])
        assert probes[scorer]["relation_swap"]["n"] == probes["counts"]["relation_swap"] > 0
    assert "| relation_swap |  |" in (out / "report.md").read_text()
    assert "| winoground_attribute | group |" in (out / "report.md").read_text()
    index = SearchIndex(out / "index", parse_phrases=False)  # the index `mvptr serve` serves after the demo
    assert len(index.ids) == len(index.files) == 128
    assert index.meta["model"] == str((out / "stage2" / "model").resolve())
    saved = load_config(str(out / "config.yaml"))
    assert saved.stage1.epochs == 4


def test_unknown_config_key_is_an_error_that_names_it(capsys):
    assert main(["pretrain", "--config", "tiny", "stage1.epochz=3"]) == 2
    assert "stage1.epochz" in capsys.readouterr().err
