"""The task guides (docs/guides/*.md) cannot rot: every ``mvptr ...`` command in their shell
blocks (also under ``torchrun ... -m mvptr``) parses with the real argparse parser, and every
``key=value`` override and ``--config`` preset loads with the real configuration schema."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mvptr.cli import parse
from mvptr.core.errors import ConfigError
from mvptr.tasks import load_config  # the tasks' sections resolved and checked, as the command line does

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL = ("", "bash", "sh", "shell", "console")  # the languages of command blocks; text, python, yaml are not


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of each command in the shell blocks, ``\\`` continuations joined."""
    out, lang, pending, start = [], None, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            lang = fence.group(1) if lang is None else None
            continue
        if lang is None or lang not in SHELL:
            continue
        if not pending:
            start = n
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append((start, pending.strip()))
            pending = ""
    return out


def mvptr_argv(line: str) -> list[str] | None:
    """The arguments of an ``mvptr`` command line (``mvptr ...``, ``torchrun ... -m mvptr ...``), else None."""
    words = shlex.split(line, comments=True)
    if words and Path(words[0]).name == "mvptr":
        return words[1:]
    for k in range(len(words) - 1):
        if words[k] == "-m" and words[k + 1] == "mvptr":
            return words[k + 2:]
    return None


def check_command(argv: list[str]) -> None:
    """Parse ``argv`` as ``mvptr`` does and load its configuration; a problem raises AssertionError or ConfigError."""
    try:
        args = parse(argv)
    except SystemExit as exit_:  # argparse's usage error
        raise AssertionError(f"mvptr {shlex.join(argv)}: the parser refuses it (exit {exit_.code})") from None
    overrides = list(getattr(args, "overrides", []) or [])
    task = getattr(args, "task", None)
    if args.command == "evaluate" and task and "=" in task:  # evaluate's optional task takes a first override
        overrides.insert(0, task)
    config = getattr(args, "config", None)
    if config or overrides:
        load_config(config, overrides)


def guide_commands(path: Path) -> list[tuple[int, list[str]]]:
    return [(n, argv) for n, line in shell_lines(path.read_text(encoding="utf-8"))
            if (argv := mvptr_argv(line)) is not None]


def test_there_are_guides():
    assert {p.stem for p in GUIDES} >= {"retrieval", "vqa-snli-ve", "search-photos"}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.stem)
def test_every_command_of_a_guide_parses_and_its_config_loads(guide):
    commands = guide_commands(guide)
    assert len(commands) >= 5, f"{guide.name}: expected its mvptr commands in shell blocks"
    for n, argv in commands:
        try:
            check_command(argv)
        except (AssertionError, ConfigError) as err:
            pytest.fail(f"{guide.relative_to(ROOT)}, line {n}: {err}")


def test_continuations_comments_and_torchrun_are_read():
    text = "x\n```\nmvptr evaluate --model m \\\n    --config base eval.k_c=8  # note\npip install mvptr\n```\n" \
           "```text\nmvptr not a command\n```\n```\ntorchrun --nproc_per_node 2 -m mvptr pretrain --config tiny\n```\n"
    lines = shell_lines(text)
    assert [n for n, _ in lines] == [3, 5, 11]
    assert mvptr_argv(lines[0][1]) == ["evaluate", "--model", "m", "--config", "base", "eval.k_c=8"]
    assert mvptr_argv(lines[1][1]) is None
    assert mvptr_argv(lines[2][1]) == ["pretrain", "--config", "tiny"]


@pytest.mark.parametrize("argv", [
    ["finetune", "retrieval", "--modle", "m"],                      # a misspelt option
    ["finetune", "vqa"],                                           # a required option left out
    ["finetune", "nli", "--model", "m"],                           # no such task
    ["features", "convert", "--features", "f", "--feature-dim", "3"],  # an option of no command
])
def test_a_wrong_command_is_caught(argv):
    with pytest.raises(AssertionError, match="the parser refuses it"):
        check_command(argv)


@pytest.mark.parametrize("argv", [
    ["finetune", "vqa", "--model", "m", "--config", "base", "finetune.vqa.quesions=q.json"],  # a misspelt key
    ["evaluate", "--model", "m", "--config", "base", "eval.k_c=many"],                       # a wrong type
    ["evaluate", "vqa", "--model", "m", "--config", "nonesuch"],                             # no such preset
    ["evaluate", "data.captions_file=c.json", "--model", "m"],                               # evaluate's first override
])
def test_a_wrong_setting_is_caught(argv):
    with pytest.raises(ConfigError):
        check_command(argv)
