"""Every function of the package is readable in one sitting: at most ``MAX_LINES`` lines and at
most ``MAX_POSITIONAL`` positional parameters (a method's ``self`` or ``cls`` does not count;
settings beyond that travel as keyword arguments or a dataclass). Read from the source with ``ast``.

``WAITING`` lists the functions over a limit that are still to be reshaped, each with what it
has now: a new offender fails, and so does an entry that no longer offends (remove it)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

SRC = Path(os.environ.get("MVPTR_SRC", Path(__file__).resolve().parents[2] / "src" / "mvptr"))
MAX_LINES = 80
MAX_POSITIONAL = 6
# "path:function" -> (lines, positional parameters) today; none is left
WAITING: dict[str, tuple[int, int]] = {}


def functions(src: Path = SRC):
    """("path:function", lines, positional parameters) of every function and method under ``src``."""
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                positional = len(names) - (names[:1] in (["self"], ["cls"]))
                yield f"{path.relative_to(src.parent)}:{node.name}", node.end_lineno - node.lineno + 1, positional


def offenders(src: Path = SRC) -> dict[str, tuple[int, int]]:
    return {where: (lines, n) for where, lines, n in functions(src) if lines > MAX_LINES or n > MAX_POSITIONAL}


def test_no_function_is_longer_or_wider_than_the_limits():
    new = {k: v for k, v in offenders().items() if k not in WAITING}
    assert not new, (f"functions over {MAX_LINES} lines or with more than {MAX_POSITIONAL} positional "
                     f"parameters (lines, positional): {new}")


def test_the_waiting_list_holds_only_offenders():
    found = offenders()
    reshaped = sorted(k for k in WAITING if k not in found)
    assert not reshaped, f"within the limits now, remove from WAITING: {reshaped}"


def test_the_walk_sees_an_offender(tmp_path):
    """The checks read what they claim to: a long, wide function and a wide method are found, a
    method's self is not counted."""
    pkg = tmp_path / "mvptr"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "wide.py").write_text(f"def f(a, b, c, d, e, f, g):\n{body}\n\n\nclass C:\n"
                                 "    def m(self, a, b, c, d, e, f, *, g=1):\n        pass\n\n"
                                 "    def w(self, a, b, c, d, e, f, g):\n        pass\n")
    assert offenders(pkg) == {"mvptr/wide.py:f": (MAX_LINES + 1, 7), "mvptr/wide.py:w": (2, 7)}
