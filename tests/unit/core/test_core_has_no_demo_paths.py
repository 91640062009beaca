"""core/ holds no value of the demo world's: its folders and files are the demo preset's.

What this means, precisely:

- no string in ``src/mvptr/core`` (literal or default) names a file or folder the demo preset
  reads or writes (``data/demo``, ``runs/demo``, its task files), and no default of the
  configuration dataclasses is a path at all (a path default would be some world's path);
- the presets name every data path core leaves unset, under ``data.root``.

What it does not mean: core still defines the ``demo`` section's keys, types, valid ranges
and the world generator's default sizes (``DemoConfig``), because every section's schema is
checked when a configuration is loaded, and core imports nothing above it.
"""

import ast
import dataclasses
from pathlib import Path

import pytest

from mvptr.core.config import CONFIG_DIR, Config, load_config, to_dict

CORE = Path(__file__).resolve().parents[3] / "src" / "mvptr" / "core"


def strings(node, prefix=""):
    """(dotted key, value) of every string in a config dict."""
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        if isinstance(value, str):
            yield f"{prefix}{key}", value
        elif isinstance(value, (dict, list)):
            yield from strings(value, f"{prefix}{key}.")


def demo_preset_paths() -> dict[str, str]:
    """The paths the demo preset sets (every string value with a folder in it), and its folders."""
    cfg = to_dict(load_config("demo"))
    paths = {k: v for k, v in strings(cfg) if "/" in v}
    return {**paths, "data.root": cfg["data"]["root"], "out_dir": cfg["out_dir"]}


def core_strings() -> list[tuple[str, int, str]]:
    return [(p.name, node.lineno, node.value) for p in sorted(CORE.glob("*.py"))
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_the_demo_preset_names_paths_to_look_for():
    """The check below looks for something: the demo preset's folders and files."""
    paths = demo_preset_paths()
    assert paths["data.root"] == "data/demo" and paths["out_dir"] == "runs/demo"
    assert {"data.captions", "eval.entities_dir", "demo.data_dir", "finetune.vqa.questions"} <= set(paths)


def test_no_core_string_names_a_demo_path():
    paths = demo_preset_paths()
    names = set(paths.values()) | {Path(p).name for p in paths.values() if "{split}" in p}
    found = [f"{file}:{line} {text[:60]!r} names {name!r}" for file, line, text in core_strings()
             for name in names if name in text]
    assert not found, "; ".join(found)


def test_no_config_default_is_a_path():
    """A default path would be some data set's; the presets and overrides name the files."""
    paths = [(k, v) for k, v in strings(to_dict(Config())) if "/" in v or v.endswith((".json", ".tsv", ".jsonl"))]
    assert not paths, paths


def test_core_leaves_the_data_paths_unset():
    d = Config().data
    assert all(getattr(d, k) == "" for k in ("root", "captions", "features", "predictions", "phrase_cache",
                                             "phrase_vocab"))
    assert Config().eval.entities_dir == "" and Config().demo.data_dir == ""


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_names_its_data_files_under_its_root(preset):
    cfg = load_config(preset)
    root = cfg.data.root
    assert root
    for f in dataclasses.fields(cfg.data):
        if f.name in ("captions", "features", "predictions", "phrase_cache", "phrase_vocab"):
            assert getattr(cfg.data, f.name).startswith(root + "/"), f.name
    assert cfg.eval.entities_dir.startswith(root + "/")
