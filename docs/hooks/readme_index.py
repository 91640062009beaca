"""mkdocs hook: the site's home page is README.md, its links into docs/ made relative to the site."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[2] / "README.md"
# [text](docs/X) and ![alt](docs/X): README sits above docs/, the home page inside it
DOCS_LINK = re.compile(r"(\]\()docs/")


def index_page(readme: str) -> str:
    """README's text with its links to docs/ pointing inside the site."""
    return DOCS_LINK.sub(r"\1", readme)


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "index.md", content=index_page(README.read_text(encoding="utf-8"))))
    return files


def on_serve(server, config, builder):
    server.watch(str(README))  # `mkdocs serve` rebuilds when README changes
    return server
