"""mkdocs hook: the site's home page is README.md, its links into docs/ made relative to the site,
and the pages' links to README.md (which work on the repository's web view) pointed at the home page."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[2] / "README.md"
# [text](docs/X) and ![alt](docs/X): README sits above docs/, the home page inside it
DOCS_LINK = re.compile(r"(\]\()docs/")
# [text](../../README.md#x) in docs/guides/: one level above docs/ is the home page's level
README_LINK = re.compile(r"(\]\()\.\./((?:\.\./)*)README\.md")


def index_page(readme: str) -> str:
    """README's text with its links to docs/ pointing inside the site."""
    return DOCS_LINK.sub(r"\1", readme)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return README_LINK.sub(r"\1\2index.md", markdown)


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "index.md", content=index_page(README.read_text(encoding="utf-8"))))
    return files


def on_serve(server, config, builder):
    server.watch(str(README))  # `mkdocs serve` rebuilds when README changes
    return server
