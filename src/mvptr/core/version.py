"""The package's version: one source of truth, pyproject.toml's ``version``.

An installed package reads it from its distribution's metadata; a source tree run without
installation (``PYTHONPATH=src``) reads the ``pyproject.toml`` beside ``src``.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "mvptr"
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def pyproject_version(path: Path | None = None) -> str | None:
    """The ``version`` of the ``[project]`` table of a pyproject.toml (default: the source
    tree's), or None (no such file or key)."""
    path = PYPROJECT if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    project = re.search(r"(?ms)^\[project\]\s*$(.*?)(?=^\[)", text + "\n[")
    found = project and re.search(r'(?m)^version\s*=\s*["\']([^"\']+)["\']', project.group(1))
    return found.group(1) if found else None


def package_version() -> str:
    """The installed distribution's version, else the source tree's, else ``0+unknown``."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return pyproject_version() or "0+unknown"


__version__ = package_version()
