"""The phrase vocabulary's threshold comes from the preset: the paper's 50 with ``base``."""

import pytest

import mvptr.cli.prepare as prepare_cli
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError


@pytest.mark.parametrize("preset, wanted", [("base", 50), ("demo", 5)])
def test_prepare_phrases_counts_with_the_presets_threshold(preset, wanted, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(prepare_cli, "prepare_phrases", lambda *a, **kw: seen.update(kw) or {})
    assert main(["prepare", "phrases", "--config", preset, "--captions", str(tmp_path / "c.json"),
                 "--out", str(tmp_path / "p")]) == 0
    assert seen["min_count"] == wanted
    assert main(["prepare", "phrases", "--config", preset, "--captions", str(tmp_path / "c.json"),
                 "--out", str(tmp_path / "p"), "--min-count", "7"]) == 0
    assert seen["min_count"] == 7


def test_a_threshold_below_one_caption_is_refused():
    with pytest.raises(ConfigError, match="data.phrase_min_count"):
        load_config("demo", ["data.phrase_min_count=0"])


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_number_of_parsing_processes_below_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "phrases", "--captions", str(tmp_path / "c.json"), "--out", str(tmp_path / "p"),
              "--n-process", value])
    assert exc.value.code == 2 and "--n-process" in capsys.readouterr().err


def test_the_old_threshold_key_says_where_it_moved():
    with pytest.raises(ConfigError, match="demo.min_count: this setting has moved; set data.phrase_min_count"):
        load_config("demo", ["demo.min_count=5"])
