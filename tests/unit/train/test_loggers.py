"""Run loggers: metrics.jsonl always, TensorBoard's event files when asked, a tracker that is not
installed a one-line error naming its extra."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab
from mvptr.train.loggers import check_loggers, log_figures, scalars
from mvptr.workflows.pretrain import pretrain_stage

pytestmark = pytest.mark.slow


def _events(directory):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_scalars_and_steps_of_metrics_jsonl(world_args, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    cfg = load_config("tiny", world_args(tmp_path) + ["stage2.max_steps=3", "stage2.log_every=1",
                                                      "stage2.loggers=[jsonl,tensorboard]"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    pretrain_stage(cfg, cfg.stage2, bundle, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    want: dict[str, list] = {}
    for r in records:
        for name, value in scalars(r).items():
            want.setdefault(name, []).append((r["step"], pytest.approx(value, rel=1e-6)))
    assert {"loss", "mlm", "itm", "lr", "samples_per_s", "skipped"} <= set(want)
    assert _events(tmp_path / "tensorboard") == want


def test_evaluation_figures_go_to_the_trackers_flattened(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    log_figures(["tensorboard"], tmp_path, "run", {"acc": 61.5, "per_label": {"yes": 70.0}, "note": "x"}, step=7)
    assert _events(tmp_path / "tensorboard") == {"eval/acc": [(7, 61.5)], "eval/per_label/yes": [(7, 70.0)]}
    assert not (tmp_path / "metrics.jsonl").exists()  # training records only


def test_an_unknown_logger_is_a_config_error(world_args, tmp_path):
    with pytest.raises(ConfigError, match=r"stage1.loggers .*unknown loggers \['csv'\]"):
        load_config("tiny", world_args(tmp_path) + ["stage1.loggers=[csv]"])


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_names_its_extra(name, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == name else real(mod, *a))
    with pytest.raises(ConfigError) as err:
        check_loggers(["jsonl", name], "stage2.loggers")
    assert str(err.value) == f"stage2.loggers: {name} is not installed: pip install 'mvptr[{name}]'"
