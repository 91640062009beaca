"""Initialisation from a local BERT directory, and a one-line error for one that does not fit."""

import pytest
import torch
from transformers import BertConfig, BertModel

from mvptr.checkpoint.bert_init import init_dir, new_bundle
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory):
    """A 4-layer BERT of the tiny preset's width, as transformers writes it, with a vocabulary."""
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    BertModel(config).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def test_a_local_bert_directory_initialises_the_encoders_layer_by_layer(small_bert):
    cfg = load_config("tiny", [f"init.source={small_bert}"])
    bundle = new_bundle(cfg, PhraseVocab({"red circle": 3}, min_count=1), ["circle"])
    ours = bundle.model.state_dict()
    bert = BertModel.from_pretrained(small_bert).state_dict()
    q = "attention.self.query.weight"
    assert torch.equal(ours[f"text_encoder.layer.1.{q}"], bert[f"encoder.layer.1.{q}"])
    assert torch.equal(ours[f"visual_encoder.layer.0.{q}"], bert[f"encoder.layer.0.{q}"])
    # the multimodal encoder takes the top layers: 4 - 2 + i
    assert torch.equal(ours[f"multimodal_encoder.layer.0.{q}"], bert[f"encoder.layer.2.{q}"])
    words = bert["embeddings.word_embeddings.weight"]
    assert torch.equal(ours["embeddings.word_embeddings.weight"][: len(words)], words)


@pytest.mark.slow
def test_pretraining_starts_from_a_local_bert_directory(small_bert, world_args, tmp_path):
    args = [*world_args(tmp_path / "run"), f"init.source={small_bert}", "stage1.max_steps=1", "threads=2"]
    assert main(["pretrain", "--config", "tiny", "--stage", "stage1", *args]) == 0
    assert (tmp_path / "run" / "stage1" / "model" / "model.safetensors").exists()


def test_an_init_source_that_does_not_fit_says_in_one_line_what_to_pass(tmp_path, capsys):
    with pytest.raises(ConfigError, match="init.source=DIR"):
        init_dir(load_config("base"))  # MiniLM is 384 wide, the base model 768
    with pytest.raises(ConfigError, match="not a BERT directory"):
        init_dir(load_config("tiny", [f"init.source={tmp_path}"]))
    assert main(["pretrain", "--config", "base", f"out_dir={tmp_path / 'run'}", "data.phrase_vocab=/nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "init.source=DIR" in err and "hidden_size=384" in err
