"""The presets ship inside the package: an installed wheel finds them from any directory."""

import re
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {"tiny", "demo", "base"}


def test_presets_are_package_resources():
    configs = files("mvptr").joinpath("configs")
    assert {p.name for p in configs.iterdir()} >= {f"{name}.yaml" for name in PRESETS}


def test_presets_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").model.hidden_size == 384
    assert load_config("tiny").model.hidden_size == 64
    (tmp_path / "mine.yaml").write_text("model:\n  hidden_size: 32\n  num_heads: 4\n")
    assert load_config("mine.yaml").model.hidden_size == 32  # a file path still works
    with pytest.raises(ConfigError, match="presets: base, demo, tiny"):
        load_config("nope")


def test_the_wheel_holds_the_presets(tmp_path):
    """Build the wheel from a copy of the sources (the build writes into its source tree)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "docs/PYPI.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mvptr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"mvptr/configs/{name}.yaml" for name in PRESETS} <= names
    assert "mvptr/py.typed" in names  # PEP 561: the package's annotations are for type checkers
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    assert "from mvptr.app.api import Model" in metadata and "make demo    # set up" not in metadata
    assert {"train", "viz", "demo", "serve", "all"} <= set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    assert not re.search(r"^Requires-Dist: matplotlib.*$(?<!extra == \"viz\")", metadata, re.M)
