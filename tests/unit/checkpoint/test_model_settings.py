"""A model directory remembers what the model sees, and a trained model takes only the
overrides that leave its weights' shapes alone."""

import pytest
import torch

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import adopt_model_settings, load_model_dir, save_model_dir
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError
from mvptr.data.builders import collator
from mvptr.model.layers import Dropout
from mvptr.text.phrases import PhraseVocab

pytestmark = pytest.mark.slow

VOCAB = PhraseVocab({"red circle": 3, "circle left of square": 3}, min_count=1)
TAGS = ["circle", "square"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model trained (here: built) without tags, with word-piece tags and mean pooling."""
    out = tmp_path_factory.mktemp("settings")
    cfg = load_config("tiny", ["objectives.use_tags=false", "model.tag_mode=word_pieces", "model.global_pool=mean"])
    return save_model_dir(out / "model", new_bundle(cfg, VOCAB, TAGS))


def test_evaluation_feeds_the_model_what_it_was_trained_on(saved):
    cfg = load_config("tiny")  # a preset that says otherwise
    assert cfg.objectives.use_tags and cfg.model.tag_mode == "concepts" and cfg.model.global_pool == "cls"
    bundle = load_model_dir(saved)
    run = adopt_model_settings(cfg, bundle)
    assert not run.objectives.use_tags and run.objectives.use_phrases
    assert run.model.tag_mode == "word_pieces" and run.model.global_pool == "mean"
    item = {"input_ids": [101, 2417, 102], "phrases": [0], "tags": ["circle"], "image_index": 0,
            "region_feats": torch.zeros(2, 134).numpy(), "boxes": torch.zeros(2, 4).numpy(), "width": 9, "height": 9}
    batch = collator(run, bundle)([item])
    assert not batch["tag_mask"].any()  # no tags for a model trained without them


def test_shape_free_model_overrides_are_applied(saved):
    bundle = load_model_dir(saved)
    weights = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    overrides = ["model.dropout=0.3", "model.attention_dropout=0.2", "model.activation_checkpointing=true"]
    run = adopt_model_settings(load_config("tiny", overrides), bundle, overrides)
    model = bundle.model
    assert run.model.dropout == model.cfg.dropout == 0.3 and model.cfg.activation_checkpointing
    ps = {m.p for name, m in model.named_modules() if isinstance(m, Dropout) and not name.endswith("attention_dropout")}
    assert ps == {0.3}
    assert {m.attention_dropout.p for m in model.modules() if hasattr(m, "attention_dropout")} == {0.2}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert run.model.tag_mode == "word_pieces"  # the rest is still the model's


@pytest.mark.parametrize("override", ["model.hidden_size=32", "model.global_pool=cls", "model.layout=official",
                                      "model.tag_mode=concepts", "objectives.use_tags=true"])
def test_an_override_that_does_not_fit_the_trained_model_is_an_error_naming_the_key(saved, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        adopt_model_settings(load_config("tiny", [override]), load_model_dir(saved), [override])
    # an override equal to the model's own setting is no conflict
    adopt_model_settings(load_config("tiny", ["model.global_pool=mean"]), load_model_dir(saved),
                         ["model.global_pool=mean"])


def test_the_command_line_refuses_a_model_override_it_cannot_apply(saved, capsys):
    assert main(["evaluate", "--model", str(saved), "--config", "tiny", "model.layout=official"]) == 2
    assert "model.layout" in capsys.readouterr().err
    assert main(["pretrain", "--config", "tiny", "--init-model", str(saved)]) == 2  # --stage both
    assert "--stage stage2" in capsys.readouterr().err


def test_a_wpg_layer_override_is_checked_against_the_loaded_models_layers(tmp_path, capsys):
    cfg = load_config("tiny", ["model.multimodal_layers=1"])  # the tiny preset has 2
    one_layer = save_model_dir(tmp_path / "model", new_bundle(cfg, VOCAB, TAGS))
    args = ["pretrain", "--config", "tiny", "--stage", "stage2", "--init-model", str(one_layer),
            f"out_dir={tmp_path / 'run'}", "model.wpg_layer=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.wpg_layer=2" in err and "1 multimodal layers" in err
    run = adopt_model_settings(load_config("tiny", ["model.wpg_layer=1"]), load_model_dir(one_layer),
                               ["model.wpg_layer=1"])
    assert run.model.wpg_layer == 1
