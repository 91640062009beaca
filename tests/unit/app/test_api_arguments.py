"""Wrong argument types of the Python API: a TypeError or ValueError saying what was expected,
never an AttributeError from inside; and the input limits a model directory records."""

import json
import warnings

import pytest

from mvptr.app.api import Model
from mvptr.app.search import SearchIndex, build_index
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import record_training, save_model_dir
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab

pytestmark = pytest.mark.slow  # builds a model and an index


@pytest.fixture(scope="module")
def model_dir(world_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("api_args")
    cfg = load_config("tiny", [*world_args(out), "data.max_tokens=17", "data.max_regions=7"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    record_training(bundle, cfg.data, ["mcr_v", "mcr_s", "vsc"])
    return save_model_dir(out / "model", bundle)


@pytest.fixture(scope="module")
def model(model_dir):
    return Model.load(model_dir, parse_phrases=False)


@pytest.fixture(scope="module")
def images(model, world):
    return model.images_from_store(str(world / "features.tsv"), str(world / "predictions.tsv"), ["000000", "000001"])


@pytest.fixture(scope="module")
def index(model_dir, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("api_args_index") / "index"
    build_index(model_dir, out, str(world / "features.tsv"), str(world / "predictions.tsv"))
    return SearchIndex(out, parse_phrases=False)


def test_the_model_directory_records_its_input_limits_and_load_uses_them(model, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["limits"] == {"max_tokens": 17, "max_phrases": 5, "max_tags": 8, "max_regions": 7}
    assert config["trained_objectives"] == ["mcr_s", "mcr_v", "vsc"]
    assert model.cfg.data.max_tokens == 17 and model.cfg.data.max_regions == 7


def test_a_directory_without_limits_says_which_it_uses(model_dir, tmp_path):
    import shutil

    old = shutil.copytree(model_dir, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    del config["limits"]
    (old / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Model.load(old, parse_phrases=False)
    assert any("records no input limits" in str(w.message) and "data.max_tokens=" in str(w.message) for w in caught)


@pytest.mark.parametrize("call, error, words", [
    (lambda m, im: m.encode_texts([1, 2]), TypeError, "texts[0]: expected a string, got int"),
    (lambda m, im: m.encode_texts("a dog"), TypeError, "expected a list of strings"),
    (lambda m, im: m.score(im, [None]), TypeError, "texts[0]: expected a string, got NoneType"),
    (lambda m, im: m.score(im[0], ["a dog"]), TypeError, "wrap one image in a list"),
    (lambda m, im: m.encode_images([42]), TypeError, "images[0]: expected Regions"),
    (lambda m, im: m.encode_images([{"boxes": []}]), ValueError, "a dict without region_feats"),
    (lambda m, im: m.ground(im[0], 5), TypeError, "caption: expected a string"),
    (lambda m, im: m.ground("image.png", "a dog"), TypeError, "image: expected Regions"),
    (lambda m, im: m.ground(im[0], "a dog", phrases="dog"), TypeError, "phrases: expected a list of strings"),
    (lambda m, im: m.answer(im[0], None), TypeError, "question: expected a string"),
    (lambda m, im: m.answer(im[0], "what?", top=0), ValueError, "top: expected at least 1"),
    (lambda m, im: m.phrases([b"bytes"]), TypeError, "texts[0]: expected a string"),
    (lambda m, im: m.images_from_store(3), TypeError, "features: expected a path"),
    (lambda m, im: Model.load(42), TypeError, "path: expected a model directory"),
    (lambda m, im: Model.load(".", config=3), TypeError, "config: expected a preset name"),
])
def test_a_wrong_argument_says_what_was_expected(model, images, call, error, words):
    with pytest.raises(error) as caught:
        call(model, images)
    assert words in str(caught.value)


@pytest.mark.parametrize("call, error, words", [
    (lambda ix: ix.query(123), TypeError, "text: expected a string, got int"),
    (lambda ix: ix.query(""), ValueError, "empty query"),
    (lambda ix: ix.query("   "), ValueError, "empty query"),
    (lambda ix: ix.query("a dog", top=0), ValueError, "top: expected at least 1"),
    (lambda ix: ix.query("a dog", top="5"), TypeError, "top: expected a whole number"),
    (lambda ix: ix.query("a dog", rerank=-5), ValueError, "rerank: expected at least 0"),
    (lambda ix: ix.query("a dog", score=None), ValueError, "unknown score"),
    (lambda ix: ix.query("a dog", timing=[]), TypeError, "timing: expected a dict"),
    (lambda ix: ix.query_batch("a dog"), TypeError, "queries: expected a list"),
    (lambda ix: ix.query_batch([("a dog", 3)]), TypeError, "queries[0]: expected a tuple"),
    (lambda ix: SearchIndex(123), TypeError, "path: expected a directory"),
])
def test_a_wrong_query_says_what_was_expected(index, call, error, words):
    with pytest.raises(error) as caught:
        call(index)
    assert words in str(caught.value)
