"""`mvptr data list`: every path a preset resolves to is in its layout, the JSON parses, and
a size or checksum is given only with its source."""

import json
import re

import pytest

from mvptr.cli import main
from mvptr.core.config import load_config, to_dict
from mvptr.formats.catalogue import DATASETS, aligned, presets

SECTIONS = ("data", "eval", "finetune", "demo")


def _paths(value, prefix=""):
    """(setting, value) of every string with a "/" under ``value``: the paths a preset resolves to."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(value, list):
        return [p for n, v in enumerate(value) for p in _paths(v, f"{prefix}[{n}]")]
    return [(prefix, value)] if isinstance(value, str) and "/" in value else []


def preset_paths(name):
    cfg = to_dict(load_config(name))
    return [p for section in SECTIONS for p in _paths(cfg[section], section)]


def _list(capsys, *argv):
    capsys.readouterr()
    assert main(["data", "list", *argv]) == 0
    return capsys.readouterr().out


def test_every_preset_path_is_in_the_table(capsys):
    out = _list(capsys)
    rows = [line.split() for line in out.splitlines()]
    for name in presets():
        paths = preset_paths(name)
        assert paths, name
        for key, path in paths:
            assert [name, key, path] in [r[:3] for r in rows], f"{name} {key} {path}"


def test_the_json_parses_and_holds_every_preset_path(capsys):
    data = json.loads(_list(capsys, "--json"))
    layout = {(r["preset"], r["key"], r["path"]) for r in data["layout"]}
    for name in presets():
        for key, path in preset_paths(name):
            assert (name, key, path) in layout
    assert {d["name"] for d in data["datasets"]} == {d.name for d in DATASETS}


def test_one_preset_s_layout(capsys):
    data = json.loads(_list(capsys, "--config", "base", "--json"))
    assert {r["preset"] for r in data["layout"]} == {"base"}
    assert ("finetune.vqa.questions", "data/vqa/v2_OpenEnded_mscoco_{split}_questions.json") in \
        {(r["key"], r["path"]) for r in data["layout"]}


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_a_size_or_checksum_comes_with_its_source(dataset):
    for f in dataset.files:
        assert (f.size is None and f.sha256 == "unknown") or f.source, f
        assert f.sha256 == "unknown" or re.fullmatch(r"[0-9a-f]{64}", f.sha256), f
    assert dataset.page.startswith("https://")


def test_the_standard_data_sets_are_named():
    files = {f.name for d in DATASETS for f in d.files}
    for name in ("dataset_coco.json", "coco_karpathy_train.json", "dataset_flickr30k.json", "features.tsv",
                 "predictions.tsv", "Sentences/<image>.txt", "v2_OpenEnded_mscoco_{split}_questions.json",
                 "v2_mscoco_{split}_annotations.json", "snli_ve_train.jsonl"):
        assert name in files


def test_columns_line_up():
    text = aligned([["a", "bb", "c"], ["ccc", "d", "e"]])
    assert text.splitlines() == ["a    bb  c", "ccc  d   e"]
