"""Every function of the package is readable in one sitting: at most ``MAX_LINES`` lines and at
most ``MAX_POSITIONAL`` positional parameters (``self`` and ``cls`` count; settings beyond that
travel as keyword arguments or a dataclass). Read from the source with ``ast``."""

from __future__ import annotations

import ast
import os
from pathlib import Path

SRC = Path(os.environ.get("MVPTR_SRC", Path(__file__).resolve().parents[2] / "src" / "mvptr"))
MAX_LINES = 80
MAX_POSITIONAL = 6


def functions(src: Path = SRC):
    """(where, name, lines, positional parameters) of every function and method under ``src``."""
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                positional = len(node.args.posonlyargs) + len(node.args.args)
                yield f"{path.relative_to(src.parent)}:{node.lineno}", node.name, lines, positional


def test_no_function_is_longer_than_the_limit():
    long = [f"{where} {name} ({lines} lines)" for where, name, lines, _ in functions() if lines > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_no_function_takes_more_positional_parameters_than_the_limit():
    wide = [f"{where} {name} ({n} positional)" for where, name, _, n in functions() if n > MAX_POSITIONAL]
    assert not wide, f"functions with more than {MAX_POSITIONAL} positional parameters: {wide}"


def test_the_walk_sees_an_offender(tmp_path):
    """The checks read what they claim to: a long, wide function in a scratch tree is found."""
    pkg = tmp_path / "mvptr"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "wide.py").write_text(f"def f(a, b, c, d, e, f, g):\n{body}\n")
    (found,) = list(functions(pkg))
    assert found[1:] == ("f", MAX_LINES + 1, 7)
