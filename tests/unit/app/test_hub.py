"""Model.from_pretrained / save_pretrained / push_to_hub: a local directory or a Hugging Face Hub
repo id read from a cache laid out as huggingface_hub lays it out (no network: offline mode or
local_files_only), the input limits travelling with the model, and uploads through a stand-in HfApi."""

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import scan_cache_dir, try_to_load_from_cache

from mvptr.app.api import Model
from mvptr.checkpoint import hub
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import record_training, save_model_dir
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError, HubError
from mvptr.tasks import TASKS, load_task_model
from mvptr.text.phrases import PhraseVocab

pytestmark = pytest.mark.slow  # builds a model

SRC = Path(__file__).resolve().parents[3] / "src"
REPO = "org/mvptr-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a red circle", "two circles", "a blue square left of a red circle"]
# not tiny.yaml's: a model must bring them along to be cut as it was trained
LIMITS = {"max_tokens": 9, "max_phrases": 2, "max_tags": 3, "max_regions": 4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = load_config("tiny", [f"data.{k}={v}" for k, v in LIMITS.items()])
    vocab = PhraseVocab({"red circle": 3, "blue square": 3, "big circle": 3}, min_count=1)
    bundle = new_bundle(cfg, vocab, ["circle", "square"], source="random")
    record_training(bundle, cfg.data, ["vsc", "itm"])
    return save_model_dir(tmp_path_factory.mktemp("hub") / "model", bundle)


def _etag(path: Path) -> str:
    """The Hub's name of a file's blob: the sha256 of an LFS file (the weights), else its git blob sha1."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hub_cache(cache: Path, repo: str, commit: str, folder: Path) -> Path:
    """``folder`` as huggingface_hub's cache holds a downloaded snapshot: models--<ns>--<name>/
    blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag> and refs/main = <commit>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        etag = _etag(f)
        (root / "blobs" / etag).write_bytes(f.read_bytes())
        os.symlink(Path("..", "..", "blobs", etag), snapshot / f.name)
    return snapshot


@pytest.fixture(scope="module")
def cache(model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_cache")
    write_hub_cache(cache, REPO, COMMIT, model_dir)
    return cache


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [{"region_feats": rng.random((n, 134), dtype=np.float32), "boxes": rng.random((n, 4)) * 40,
             "confs": rng.random(n).astype(np.float32), "classes": ["circle", "square"] * (n // 2),
             "width": 64, "height": 48} for n in (6, 2, 8)]


@pytest.fixture(scope="module")
def local(model_dir):
    return Model.from_pretrained(model_dir, parse_phrases=False)


def test_the_cache_is_the_one_huggingface_hub_reads(cache, model_dir):
    repos = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert set(repos) == {REPO}
    (revision,) = repos[REPO].revisions
    assert revision.commit_hash == COMMIT and revision.refs == {"main"}
    assert {f.file_name for f in revision.files} == {p.name for p in model_dir.iterdir()}
    found = try_to_load_from_cache(REPO, "config.json", cache_dir=cache)
    assert Path(found).read_bytes() == (model_dir / "config.json").read_bytes()


def test_a_local_directory_loads_with_the_limits_it_was_trained_with(local, images):
    assert {k: getattr(local.cfg.data, k) for k in LIMITS} == LIMITS
    long = local.encode_texts([" ".join(["circle"] * 30)], phrases=[["red circle", "blue square", "big circle"]])
    assert long.hidden.shape[1] == LIMITS["max_tokens"] + LIMITS["max_phrases"]
    assert local.encode_images(images).hidden.shape[1] == LIMITS["max_regions"]


def test_a_hub_id_loads_from_the_cache_with_the_same_limits_and_scores(cache, local, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "records no input limits" warning: the limits came along
        model = Model.from_pretrained(REPO, cache_dir=cache, local_files_only=True, parse_phrases=False)
    assert model.directory == cache / "models--org--mvptr-tiny" / "snapshots" / COMMIT
    assert {k: getattr(model.cfg.data, k) for k in LIMITS} == LIMITS
    assert torch.equal(model.score(images, TEXTS), local.score(images, TEXTS))
    # a revision by commit or by branch name reads the same snapshot
    assert Model.from_pretrained(REPO, cache_dir=cache, local_files_only=True, revision=COMMIT).directory == \
        model.directory


def test_offline_by_environment_a_hub_id_loads_as_the_local_directory_does(cache, local, images, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE as a user sets them (huggingface_hub reads them at import)."""
    script = f"""
import json, pickle, sys
from mvptr.app.api import Model
images = pickle.loads(bytes.fromhex(sys.argv[1]))
model = Model.from_pretrained({REPO!r}, parse_phrases=False)
print(json.dumps({{"scores": model.score(images, {TEXTS!r}).tolist(),
                  "limits": {{k: getattr(model.cfg.data, k) for k in {list(LIMITS)!r}}}}}))
"""
    import pickle

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(SRC),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, pickle.dumps(images).hex()], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["limits"] == LIMITS
    assert torch.allclose(torch.tensor(out["scores"]), local.score(images, TEXTS), atol=1e-6)


def test_a_hub_id_missing_offline_is_one_line_saying_what_to_do(tmp_path):
    with pytest.raises(HubError) as err:
        Model.from_pretrained("org/not-downloaded", cache_dir=tmp_path, local_files_only=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith("org/not-downloaded: ")
    assert "go online" in message and "pass a local model directory" in message and str(tmp_path) in message


def test_a_revision_not_in_the_cache_offline_is_a_hub_error(cache):
    with pytest.raises(HubError, match="revision 'v2' of the Hugging Face Hub repo org/mvptr-tiny"):
        Model.from_pretrained(REPO, cache_dir=cache, local_files_only=True, revision="v2")


def test_hub_arguments_with_a_local_directory_are_an_error(model_dir):
    with pytest.raises(ConfigError, match="a local path takes no revision, cache_dir"):
        Model.from_pretrained(model_dir, revision="main", cache_dir="/tmp")


def test_a_missing_local_directory_that_is_no_hub_id_says_it_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        Model.from_pretrained(tmp_path / "runs" / "demo" / "model")


def test_a_config_against_the_recorded_limits_is_an_error_unless_overridden_by_name(model_dir):
    with pytest.raises(ConfigError) as err:
        Model.from_pretrained(model_dir, config="tiny")
    message = str(err.value)
    assert "the model was trained with max_tokens=9" in message and "limits={" in message and "\n" not in message
    model = Model.from_pretrained(model_dir, config="tiny", limits={"max_tokens": 24, "max_phrases": 5,
                                                                   "max_tags": 8, "max_regions": 10})
    assert (model.cfg.data.max_tokens, model.cfg.data.max_regions) == (24, 10)
    agreeing = load_config("tiny", [f"data.{k}={v}" for k, v in LIMITS.items()])
    assert Model.from_pretrained(model_dir, config=agreeing).cfg.data.max_regions == LIMITS["max_regions"]
    assert Model.from_pretrained(model_dir, limits={"max_regions": 2}).cfg.data.max_regions == 2


@pytest.mark.parametrize("limits, error, words", [
    ({"max_words": 3}, ConfigError, "limits: unknown max_words"),
    ({"max_tokens": "9"}, TypeError, "limits['max_tokens']: expected a whole number"),
    ([("max_tokens", 9)], TypeError, "limits: expected a dict"),
    ({"max_tokens": 2}, ConfigError, "data.max_tokens"),
    ({"max_tokens": 510, "max_phrases": 5}, ConfigError, "the model's 512 positions"),
])
def test_bad_limits_say_what_was_expected(model_dir, limits, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(")):
        Model.from_pretrained(model_dir, limits=limits)


def test_load_is_from_pretrained(model_dir, local, images):
    assert Model.load.__func__ is Model.from_pretrained.__func__
    assert torch.equal(Model.load(model_dir, parse_phrases=False).score(images, TEXTS), local.score(images, TEXTS))


def test_save_pretrained_round_trips_the_model_its_limits_and_its_card(model_dir, local, images, tmp_path):
    card = (model_dir / "README.md").read_text() + "\nNotes of the people who trained it.\n"
    source = tmp_path / "source"
    save_model_dir(source, local.bundle)
    (source / "README.md").write_text(card)
    out = Model.from_pretrained(source).save_pretrained(tmp_path / "copy")
    assert json.loads((out / "config.json").read_text())["limits"] == LIMITS
    assert (out / "README.md").read_text() == card
    again = Model.from_pretrained(out, parse_phrases=False)
    assert torch.equal(again.score(images, TEXTS), local.score(images, TEXTS))


def attach_vqa_head(bundle, answers):
    """A VQA head given in memory, as a fine-tuning run leaves it (task.json's record included)."""
    TASKS["vqa"].attach_head(bundle, {"answers": answers})
    bundle.task = {"task": "vqa", "answers": answers}


def test_save_pretrained_keeps_a_fine_tuned_head(local, images, tmp_path):
    bundle = Model.from_pretrained(local.directory).bundle
    attach_vqa_head(bundle, ["red", "blue", "two"])
    vqa = Model(bundle, parse_phrases=False)
    out = vqa.save_pretrained(tmp_path / "vqa")
    assert json.loads((out / "task.json").read_text()) == {"task": "vqa", "answers": ["red", "blue", "two"]}
    again = Model.from_pretrained(out, parse_phrases=False)
    assert again.answer(images[0], "what color?", top=3) == vqa.answer(images[0], "what color?", top=3)
    # and what task.json said comes back unchanged (the keys a fine-tuning run wrote)
    info = {"task": "vqa", "answers": ["red", "blue", "two"], "train_split": "train", "mask_regions": False}
    (out / "task.json").write_text(json.dumps(info))
    resaved = Model.from_pretrained(out).save_pretrained(tmp_path / "vqa2")
    assert json.loads((resaved / "task.json").read_text()) == info


class FakeHfApi:
    """Records what an upload is asked to do, and what the folder holds at that moment."""

    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        limits = json.loads((Path(folder_path) / "config.json").read_text())["limits"]
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": files, "limits": limits,
                                                      "token": self.token}))
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"


def test_push_to_hub_creates_the_repo_and_uploads_the_model_directory(local, monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    url = local.push_to_hub("me/mvptr-tiny", private=True, token="hf_x")
    assert url == f"https://huggingface.co/me/mvptr-tiny/commit/{COMMIT}"
    (create, upload) = FakeHfApi.calls
    assert create[:2] == ("create_repo", "me/mvptr-tiny") and create[2]["private"] is True
    assert create[2]["exist_ok"] is True and create[2]["repo_type"] == "model"
    assert upload[:2] == ("upload_folder", "me/mvptr-tiny") and upload[2]["token"] == "hf_x"
    assert {"config.json", "model.safetensors", "phrase_vocab.json", "tag_vocab.json", "README.md",
            "tokenizer.json"} <= set(upload[2]["files"])
    assert upload[2]["limits"] == LIMITS


def test_push_to_hub_refusals_are_one_line(local, monkeypatch):
    class Refusing(FakeHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create\nmore")

    monkeypatch.setattr(hub, "HfApi", Refusing)
    with pytest.raises(HubError) as err:
        local.push_to_hub("me/mvptr-tiny")
    assert "\n" not in str(err.value) and "401 Client Error" in str(err.value) and "hf auth login" in str(err.value)
    with pytest.raises(ConfigError, match="repo_id: expected a Hugging Face Hub repo id"):
        local.push_to_hub("not a repo id")


def test_the_bundle_loaders_take_hub_ids_too(local, tmp_path):
    from mvptr.checkpoint.model_dir import from_pretrained

    bundle = Model.from_pretrained(local.directory).bundle
    attach_vqa_head(bundle, ["red", "blue"])
    folder = Model(bundle).save_pretrained(tmp_path / "vqa")
    cache = tmp_path / "cache"
    write_hub_cache(cache, "org/mvptr-vqa", COMMIT, folder)
    loaded = load_task_model("org/mvptr-vqa", cache_dir=cache, local_files_only=True)
    assert loaded.model.answers == ["red", "blue"] and loaded.task == {"task": "vqa", "answers": ["red", "blue"]}
    assert loaded.limits == LIMITS
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    encoders = from_pretrained("org/mvptr-vqa", cache_dir=cache, local_files_only=True)
    assert type(encoders).__name__ == "MVPTR" and not hasattr(encoders, "task_head")
    with pytest.raises(HubError, match="org/other: no local directory of that name"):
        load_task_model("org/other", cache_dir=cache, local_files_only=True)
