"""Initialisation from a local BERT directory, and a one-line error for one that does not fit."""

import pytest
import torch
from transformers import BertConfig, BertForPreTraining, BertModel

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


@pytest.fixture(scope="module")
def bert_with_heads(tmp_path_factory):
    """A tiny BertForPreTraining as transformers writes it: pooler, next-sentence and MLM heads."""
    path = tmp_path_factory.mktemp("bert_heads")
    torch.manual_seed(1)
    config = BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    model = BertForPreTraining(config)
    with torch.no_grad():  # transformers starts the biases at 0; make them tell the classes apart
        model.cls.seq_relationship.bias.copy_(torch.tensor([0.5, -0.25]))
        model.cls.predictions.bias.normal_()
    model.save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def test_the_itm_and_mlm_heads_start_from_berts_next_sentence_and_mlm_heads(bert_with_heads, capsys):
    cfg = load_config("tiny", [f"init.source={bert_with_heads}"])
    model = new_bundle(cfg, PhraseVocab({"red circle": 3}, min_count=1), ["circle"]).model.eval()
    bert = BertForPreTraining.from_pretrained(bert_with_heads).eval()
    pooled_input = torch.randn(5, 64)
    with torch.no_grad():
        nsp = bert.cls.seq_relationship(bert.bert.pooler.activation(bert.bert.pooler.dense(pooled_input)))
        itm = model.itm_head(pooled_input)
    # BERT's class 0 is "is next", ours 1 is "matched"
    torch.testing.assert_close(itm, nsp.flip(-1))
    assert torch.equal(model.mlm_head.bias.detach(), bert.cls.predictions.bias.detach())
    assert torch.equal(model.mlm_head.transform.dense.weight.detach(), bert.cls.predictions.transform.dense.weight)
    assert "start from random" not in capsys.readouterr().err


def test_a_source_without_pretraining_heads_says_which_heads_start_fresh(small_bert, capsys):
    cfg = load_config("tiny", [f"init.source={small_bert}"])
    new_bundle(cfg, PhraseVocab({"red circle": 3}, min_count=1), ["circle"])
    notes = [line for line in capsys.readouterr().err.splitlines() if "start from random" in line]
    assert len(notes) == 1
    assert "itm_head.classifier" in notes[0] and "mlm_head.bias" in notes[0] and "mlm_head.transform" in notes[0]
    assert "itm_head.pooler" not in notes[0]  # BertModel has a pooler
