"""Errors the user can cause are the project's error types (``mvptr.core.errors``), never a
plain built-in exception: the command line prints those as one line with exit status 2, a
caller of the Python API catches them as ``MvptrError`` (and still as ``ValueError``,
``TypeError``, ``FileNotFoundError``... where Python's own would have been one).

A plain built-in exception raised in ``src/mvptr`` is a program error (a broken internal
invariant, a bug) and must be named below with the reason it cannot be the user's doing.
"""

import ast
import builtins
import pickle
from pathlib import Path

import pytest

from mvptr.core import errors
from mvptr.core.errors import FormatError, MvptrError

SRC = Path(__file__).resolve().parents[3] / "src" / "mvptr"

# (file under src/mvptr, enclosing function, exception) -> why no user can cause it
INTERNAL = {
    ("checkpoint/bert_init.py", "init_phrase_rows", "ValueError"): "callers pass the model's own phrase vocabulary",
    ("checkpoint/model_dir.py", "_write_model_files", "OSError"): "re-raises an OS error with its errno (full disk)",
    ("core/fileio.py", "naming", "OSError"): "re-raises an OS error with its errno and path",
    ("cli/serve.py", "_fail", "SystemExit"): "exit status 2 after the one-line message",
    ("data/collate.py", "Collator._leaking_phrases", "ValueError"): "the dataset builds phrases and positions together",
    ("demo/probe_images.py", "group_scenes", "RuntimeError"): "the generator's own retry budget ran out",
    ("demo/probes.py", "_shuffled", "ValueError"): "callers pass captions of two different words at least",
    ("demo/probes.py", "image_probes", "AssertionError"): "the probe generator checks its own caption",
    ("demo/scenes.py", "_alpha", "ValueError"): "shape names come from the world's own table",
    ("demo/scenes.py", "make_captions", "RuntimeError"): "the generator's own retry budget ran out",
    ("eval/stats.py", "paired_difference", "ValueError"): "both sides come from the same seeds",
    ("formats/phrase_cache.py", "ParsedCaption.__post_init__", "ValueError"): "the parser builds both lists together",
    ("formats/tsv.py", "TSVFile._span", "IndexError"): "the sequence protocol (iteration stops on it)",
    ("model/losses.py", "mlm_loss", "ValueError"): "the trainer passes the rows with average='sample'",
    ("model/modeling.py", "MVPTR.fuse", "ValueError"): "callers of the merged model pass its tag inputs",
    ("model/task_models.py", "TaskModel.add_head", "NotImplementedError"): "abstract method",
    ("model/task_models.py", "TaskModel.task_args", "NotImplementedError"): "abstract method",
    ("tasks/base.py", "Task.defaults", "NotImplementedError"): "abstract method",
    ("tasks/base.py", "Task.train_data", "NotImplementedError"): "abstract method",
    ("tasks/base.py", "Task.loss", "NotImplementedError"): "abstract method",
    ("tasks/base.py", "Task.evaluate", "NotImplementedError"): "abstract method",
    ("viz/attention.py", "last_layer_inputs", "RuntimeError"): "the forward hook's own check",
}

BUILTIN_ERRORS = {name for name, obj in vars(builtins).items()
                  if isinstance(obj, type) and issubclass(obj, BaseException)}


def raised_builtins(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function's qualified name, built-in exception, line) of each ``raise`` of a
    built-in exception class or instance in one file (a bare ``raise`` or a caught error is none)."""
    found, scope = [], []

    class Visitor(ast.NodeVisitor):
        def visit_scope(self, node):
            scope.append(node.name)
            self.generic_visit(node)
            scope.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_scope

        def visit_Raise(self, node):
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BUILTIN_ERRORS:
                found.append((".".join(scope), exc.id, node.lineno))
            self.generic_visit(node)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def all_raises() -> dict[tuple[str, str, str], int]:
    return {(p.relative_to(SRC).as_posix(), where, name): line
            for p in sorted(SRC.rglob("*.py")) for where, name, line in raised_builtins(p)}


def test_no_plain_exception_outside_the_internal_invariants():
    plain = {key: line for key, line in all_raises().items() if key not in INTERNAL}
    assert not plain, ("plain built-in exceptions where a user error type belongs (use one of mvptr.core.errors, "
                       "or name the internal invariant in INTERNAL with its reason): "
                       + "; ".join(f"{f}:{line} {where} raises {name}" for (f, where, name), line in plain.items()))


def test_every_internal_entry_still_exists():
    stale = set(INTERNAL) - set(all_raises())
    assert not stale, f"INTERNAL names raises that are gone (remove them): {sorted(stale)}"


def test_every_reason_is_one_phrase():
    assert all(reason and len(reason) <= 60 and "." not in reason.rstrip(".") for reason in INTERNAL.values())


def test_the_scan_finds_plain_raises(tmp_path):
    """The scan itself: a plain raise in a function, a method and at module level is found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    raise ValueError('x')\n"
                 "class C:\n    def g(self):\n        raise TypeError\n"
                 "raise KeyError('k') from None\n"
                 "def ok():\n    try:\n        pass\n    except ValueError as err:\n        raise\n"
                 "def own():\n    raise ConfigError('x')\n")
    assert raised_builtins(f) == [("f", "ValueError", 2), ("C.g", "TypeError", 5), ("", "KeyError", 6)]


@pytest.mark.parametrize("cls, plain", [
    (errors.ConfigError, ValueError), (FormatError, ValueError), (errors.WrongTypeError, TypeError),
    (errors.MissingFileError, FileNotFoundError), (errors.NotFiniteError, ValueError), (errors.OutputDirError, OSError),
    (errors.OutputExistsError, FileExistsError), (errors.OutputExistsError, errors.OutputDirError)])
def test_user_errors_are_still_the_builtin_they_replace(cls, plain):
    """Code that caught the built-in exception before still catches the project's type."""
    err = cls("x: what to do")
    assert isinstance(err, MvptrError) and isinstance(err, plain)
    assert str(err) == "x: what to do"


def test_user_errors_survive_pickling():
    """Errors cross process boundaries (DataLoader workers): type, message and reason survive."""
    for err in (errors.MissingFileError("a: not found"), errors.OutputExistsError("b exists"),
                FormatError("c", "bad base64"), errors.WrongTypeError("d"), errors.NotFiniteError("e")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert getattr(back, "reason", None) == getattr(err, "reason", None)


def test_all_names_every_error_type():
    exported = {n for n in errors.__all__ if isinstance(getattr(errors, n), type)
                and issubclass(getattr(errors, n), BaseException)}
    defined = {n for n, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, BaseException)
               and obj.__module__ == errors.__name__}
    assert exported == defined
