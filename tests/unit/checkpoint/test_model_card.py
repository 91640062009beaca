"""The model card a saved model directory carries: front matter, what trained it, the command."""

from __future__ import annotations

import shutil

import pytest
import yaml

from mvptr.app.search import model_fingerprint
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import write_model_card
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab
from mvptr.workflows.pretrain import pretrain_stage

pytestmark = pytest.mark.slow


def test_a_trained_model_directory_has_a_card_and_the_card_is_not_in_its_fingerprint(world_args, tmp_path,
                                                                                      monkeypatch):
    cfg = load_config("tiny", world_args(tmp_path) + ["stage1.max_steps=1"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    monkeypatch.setattr("sys.argv", ["mvptr", "pretrain", "--config", "tiny", "stage1.max_steps=1"])
    pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
    text = (tmp_path / "model" / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "mvptr" and meta["license"] == "mit"
    assert "demo-world" in meta["tags"] and "metrics" not in meta  # no evaluation ran
    body = text.split("---\n", 2)[2]
    assert "objectives: mcr_v, mcr_s, vsc" in body
    assert "mvptr pretrain --config tiny stage1.max_steps=1" in body
    assert "not for real images" in body and "no safety evaluation" in body
    assert "96 samples" in body or "samples of split" in body

    before = model_fingerprint(tmp_path / "model")
    bundle.card["evaluation"] = {"retrieval": {"ir_r1": 12.5, "tr": {"r1": 20.0}}}
    write_model_card(tmp_path / "model", bundle)
    meta = yaml.safe_load((tmp_path / "model" / "README.md").read_text().split("---\n")[1])
    assert meta["metrics"] == ["ir_r1", "r1"]
    assert model_fingerprint(tmp_path / "model") == before
    shutil.copy(tmp_path / "model" / "config.json", tmp_path / "config.json")
    (tmp_path / "model" / "config.json").write_text((tmp_path / "config.json").read_text() + " ")
    assert model_fingerprint(tmp_path / "model") != before  # the model's own files still count
