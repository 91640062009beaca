"""mkdocs hook: the command-line reference page, the ``--help`` of every ``mvptr`` command as the
argparse parser of ``mvptr.cli`` prints it (so the page cannot drift from the options)."""

from __future__ import annotations

import argparse
import os

from mkdocs.structure.files import File, Files

from mvptr.cli import COMMANDS, build_parser

WIDTH = "100"  # argparse wraps help to $COLUMNS: one width on every machine


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [(name, sub) for a in actions for name, sub in a.choices.items()]


def _sections(parser: argparse.ArgumentParser, level: int) -> list[str]:
    """``parser``'s help, then each of its subcommands' (``mvptr visualize curves``, ...), depth first."""
    out = [f"{'#' * level} `{parser.prog}`\n", f"```text\n{parser.format_help().rstrip()}\n```\n"]
    for _, sub in _subcommands(parser):
        out += _sections(sub, level + 1)
    return out


def cli_page() -> str:
    """The page: ``mvptr --help``, then every command's ``--help``."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser(*COMMANDS)
        parts = ["# Command line\n",
                 "Every command's `--help`, generated from the parser itself when the site is built. "
                 "A mistake of the user's is one line on stderr and exit status 2.\n",
                 f"```text\n{parser.format_help().rstrip()}\n```\n"]
        for _, sub in _subcommands(parser):
            parts += _sections(sub, 2)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_page()))
    return files
