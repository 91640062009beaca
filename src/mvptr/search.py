"""Image search under its earlier name: :mod:`mvptr.app.search` holds it."""

from .app.search import Hit, SearchIndex, build_index, index_config

__all__ = ["Hit", "SearchIndex", "build_index", "index_config"]
