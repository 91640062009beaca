"""The documentation site's pieces that run without building it: every page the nav of
mkdocs.yml names exists and every guide is in the nav, and the hooks that generate the home page
(from README.md) and the command-line reference (from the parser). ``make docs`` builds the
site itself with ``mkdocs build --strict`` (CI runs it after the tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from mvptr.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = {"index.md", "cli.md"}  # written by the hooks when the site is built


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    return [p for v in node for p in _nav_pages(v)]


def _config() -> dict:
    # mkdocs.yml holds no tags (no !!python/name): the safe loader reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _hook(name: str):
    pytest.importorskip("mkdocs")  # the docs extra
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_page_of_the_nav_exists_and_every_guide_is_listed():
    pages = _nav_pages(_config()["nav"])
    missing = [p for p in pages if p not in GENERATED and not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml lists pages that do not exist: {missing}"
    guides = {f"guides/{p.name}" for p in (DOCS / "guides").glob("*.md")}
    assert guides and guides <= set(pages), f"guides missing from the nav: {sorted(guides - set(pages))}"
    assert GENERATED <= set(pages)


def test_the_hooks_named_in_mkdocs_yml_exist():
    hooks = _config()["hooks"]
    assert hooks and all((ROOT / h).is_file() for h in hooks)


def test_the_home_page_is_the_readme_with_its_links_inside_the_site():
    hook = _hook("readme_index")
    page = hook.index_page("See [the decisions](docs/DECISIONS.md#layout) and ![page](docs/serve.png); "
                           "`docs/PERFORMANCE.md` stays as written.")
    assert page == ("See [the decisions](DECISIONS.md#layout) and ![page](serve.png); "
                    "`docs/PERFORMANCE.md` stays as written.")
    guide = hook.on_page_markdown("[Real data](../../README.md#real-data), [x](../README.md)", None, None, None)
    assert guide == "[Real data](../index.md#real-data), [x](index.md)"


def test_the_cli_reference_has_every_command_s_help():
    page = _hook("cli_reference").cli_page()
    for name in COMMANDS:
        assert f"## `mvptr {name}`" in page, name
    # nested commands and options come from the parser itself
    assert "### `mvptr visualize curves`" in page
    assert "--trust-pickle" in page and "--target-recall" in page
