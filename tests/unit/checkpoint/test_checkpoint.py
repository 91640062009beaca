"""Model directories: round trip, strict loading, pickle refusal, atomic replacement."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvptr.checkpoint.model_dir import (
    MODEL_FILE,
    Bundle,
    from_pretrained,
    has_checkpoint,
    load_model_dir,
    load_training_state,
    save_model_dir,
    save_pretrained,
)
from mvptr.core.config import load_config
from mvptr.core.errors import FormatError, UntrustedPickleError
from mvptr.model.modeling import MVPTR
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    cfg = load_config("tiny").model
    vocab = PhraseVocab({"red circle": 3, "circle left of square": 2}, min_count=1)
    model = MVPTR(cfg, len(vocab), torch.tensor([[4418, 0], [2417, 2598]]))
    return Bundle(model.eval(), load_tokenizer(), vocab, ["circle", "red square"])


@pytest.mark.slow
def test_save_and_load_pretrained_round_trip(bundle, tmp_path):
    save_pretrained(bundle.model, tmp_path / "m", bundle.tokenizer, bundle.phrase_vocab, bundle.tag_vocab)
    assert {"config.json", MODEL_FILE, "phrase_vocab.json", "tag_vocab.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()}
    loaded = from_pretrained(tmp_path / "m")
    for k, v in bundle.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    full = load_model_dir(tmp_path / "m")
    assert full.tag_vocab == bundle.tag_vocab and full.phrase_vocab.phrase(1) == "circle left of square"
    assert full.tokenizer("a red circle")["input_ids"] == bundle.tokenizer("a red circle")["input_ids"]


def test_missing_unexpected_and_misshapen_weights_are_named(bundle, tmp_path):
    save_model_dir(tmp_path / "m", bundle)
    path = tmp_path / "m" / MODEL_FILE
    state = load_file(str(path))
    state.pop("itm_head.classifier.bias")
    state["extra.weight"] = torch.zeros(1)
    state["text_proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        load_model_dir(tmp_path / "m")
    msg = str(err.value)
    assert "itm_head.classifier.bias" in msg and "extra.weight" in msg and "text_proj.weight: (3, 3)" in msg


def test_pickled_weights_load_only_when_trusted(bundle, tmp_path):
    save_model_dir(tmp_path / "m", bundle)
    state = load_file(str(tmp_path / "m" / MODEL_FILE))
    (tmp_path / "m" / MODEL_FILE).unlink()
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
        load_model_dir(tmp_path / "m")
    loaded = load_model_dir(tmp_path / "m", trust_pickle=True).model
    assert torch.equal(loaded.text_proj.weight, bundle.model.text_proj.weight)


def test_training_state_loads_with_weights_only(bundle, tmp_path):
    save_model_dir(tmp_path / "m", bundle, {"step": 3, "rng": torch.get_rng_state()})
    assert load_training_state(tmp_path / "m")["step"] == 3
    torch.save({"step": 3, "evil": object()}, tmp_path / "m" / "training_state.pt")  # not plain data
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_training_state(tmp_path / "m")


def test_a_swap_cut_between_its_renames_recovers_the_previous_directory(bundle, tmp_path):
    save_model_dir(tmp_path / "m", bundle, {"step": 2})
    # killed after `m` became `m.old` and before `m.tmp` became `m`
    (tmp_path / "m").rename(tmp_path / "m.old")
    shutil.copytree(tmp_path / "m.old", tmp_path / "m.tmp")
    (tmp_path / "m.tmp" / MODEL_FILE).write_bytes(b"torn")
    assert has_checkpoint(tmp_path / "m")
    assert load_training_state(tmp_path / "m")["step"] == 2
    save_model_dir(tmp_path / "m", bundle, {"step": 4})  # the next save clears the leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_phrases"] == 2


def test_non_strict_loading_reports_but_still_refuses_shapes(bundle, tmp_path):
    save_model_dir(tmp_path / "m", bundle)
    path = tmp_path / "m" / MODEL_FILE
    state = load_file(str(path))
    state.pop("itm_head.classifier.bias")
    state["vqa_head.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.warns(UserWarning, match=r"missing \['itm_head.classifier.bias'\], unexpected \['vqa_head.weight'\]"):
        loaded = load_model_dir(tmp_path / "m", strict=False).model
    assert torch.equal(loaded.text_proj.weight, bundle.model.text_proj.weight)
    state["text_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(path))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_model_dir(tmp_path / "m", strict=False)


@pytest.mark.parametrize("damage", ["torn weights", "bad config", "no config", "bad vocab", "vocab mismatch"])
def test_a_damaged_model_directory_is_an_error_that_names_the_file(bundle, tmp_path, damage):
    save_model_dir(tmp_path / "m", bundle)
    m = tmp_path / "m"
    if damage == "torn weights":
        m.joinpath(MODEL_FILE).write_bytes(m.joinpath(MODEL_FILE).read_bytes()[:100])
        expected = MODEL_FILE
    elif damage == "bad config":
        m.joinpath("config.json").write_text("{not json")
        expected = "config.json: not valid JSON"
    elif damage == "no config":
        m.joinpath("config.json").unlink()
        expected = "config.json: not found"
    elif damage == "bad vocab":
        m.joinpath("phrase_vocab.json").write_text('{"nothing": 1}')
        expected = "phrase_vocab.json: not a phrase vocabulary"
    else:
        PhraseVocab({"red circle": 1}, min_count=1).save(m / "phrase_vocab.json")
        expected = "phrase_vocab.json has 1 phrases, the model 2"
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        load_model_dir(m)


def _broken(bundle, tmp_path, damage):
    path = save_model_dir(tmp_path / "m", bundle)
    damage(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("damage,message", [
    # without its tokenizer files, transformers would build a near-empty tokenizer: every word [UNK]
    (lambda p: [(p / f).unlink() for f in ("tokenizer.json", "vocab.txt") if (p / f).exists()],
     "the tokenizer has .* tokens, the model's word table 30522"),
    (lambda p: (p / "tag_vocab.json").write_text(json.dumps(["circle"])), "1 tags, the model's tag table 2"),
    (lambda p: save_file({**load_file(str(p / MODEL_FILE)),
                          "text_proj.weight": torch.full_like(load_file(str(p / MODEL_FILE))["text_proj.weight"],
                                                              float("nan"))}, str(p / MODEL_FILE)),
     "non-finite weights .* in text_proj.weight"),
])
def test_a_model_directory_whose_parts_do_not_belong_together_is_refused(bundle, tmp_path, damage, message):
    path = _broken(bundle, tmp_path, damage)
    with pytest.raises(FormatError, match=message):
        load_model_dir(path)


def test_evaluate_checks_where_it_writes_before_the_work(bundle, tmp_path, capsys, monkeypatch):
    from mvptr.cli import main
    from mvptr.workflows import evaluate as zero_shot

    model = save_model_dir(tmp_path / "m" / "model", bundle)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(zero_shot, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    assert main(["evaluate", "--model", str(model), "--config", "tiny", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and err.count("\n") == 1
    monkeypatch.setattr(zero_shot, "evaluate", lambda *a, **k: {"retrieval": {}, "images": 0})
    assert main(["evaluate", "--model", str(model), "--config", "tiny", "--out", str(tmp_path / "results")]) == 0
    assert json.loads((tmp_path / "results" / "eval.json").read_text())["images"] == 0
