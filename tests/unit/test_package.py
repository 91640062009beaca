"""The package introduces itself: its version, and a ``mvptr --help`` that imports no torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import mvptr
from mvptr.cli import COMMANDS, build_parser, chosen_command, main
from mvptr.core import version

ROOT = Path(mvptr.__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "numpy", "scipy", "matplotlib", "sklearn", "spacy", "faiss", "safetensors")


def _pyproject_version() -> str:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_pyproject_s():
    assert mvptr.__version__ == _pyproject_version()
    assert version.pyproject_version(ROOT / "pyproject.toml") == _pyproject_version()


def test_a_source_tree_without_installation_reads_pyproject(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version.metadata, "version", missing)
    assert version.package_version() == _pyproject_version()
    monkeypatch.setattr(version, "PYPROJECT", ROOT / "no-such-pyproject.toml")
    assert version.package_version() == "0+unknown"


def test_the_project_table_s_version_is_read(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.other]\nversion = "9.9"\n\n[project]\nname = "mvptr"\nversion = "1.2.3"\n\n'
                    '[project.optional-dependencies]\nx = []\n')
    assert version.pyproject_version(path) == "1.2.3"
    path.write_text('[tool.other]\nversion = "9.9"\n')
    assert version.pyproject_version(path) is None


def test_mvptr_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mvptr {_pyproject_version()}"


# `python -m mvptr ARGS`, then the names in sys.modules, as JSON on stderr's last line
PROBE = """import json, runpy, sys
sys.argv = ["mvptr", *sys.argv[1:]]
try:
    runpy.run_module("mvptr", run_name="__main__", alter_sys=True)
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _imported(*args: str) -> tuple[set[str], str]:
    """The modules ``python -m mvptr ARGS`` has imported when it exits, and what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, run.stderr[-2000:]
    return set(report["modules"]), run.stdout


def test_mvptr_help_imports_no_torch():
    names, out = _imported("--help")
    assert "mvptr.cli" in names  # the measurement sees the package's imports
    heavy = sorted(n for n in names if n.split(".")[0] in HEAVY)
    assert not heavy, f"`mvptr --help` imports {heavy[:10]}"
    commands = sorted(n for n in names if n.startswith("mvptr.cli."))
    assert not commands, f"`mvptr --help` imports command modules {commands}"
    for command, (_, help_text) in COMMANDS.items():
        assert command in out and help_text.split()[0] in out
    assert "--version" in out


@pytest.mark.slow
def test_a_command_s_help_imports_its_module():
    names, out = _imported("pretrain", "--help")
    assert "mvptr.cli.train" in names and "torch" in names
    assert "--init-model" in out and "mvptr.cli.serve" not in names


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [(a.dest, a.help) for a in action._choices_actions]


def test_the_table_agrees_with_the_command_modules():
    """Every command module registers exactly its table's commands, with the table's help, in its order."""
    assert _subcommands(build_parser(*COMMANDS)) == _subcommands(build_parser())
    assert _subcommands(build_parser()) == [(c, h) for c, (_, h) in COMMANDS.items()]


def test_the_chosen_command():
    assert chosen_command(["pretrain", "--stage", "stage1"]) == "pretrain"
    assert chosen_command(["--help"]) is None and chosen_command([]) is None
    assert chosen_command(["pretrainn"]) is None
