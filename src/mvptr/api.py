"""The Python API under its earlier name: :mod:`mvptr.app.api` holds it (``Model``)."""

from .app.api import Grounded, Model, open_feature_store

__all__ = ["Grounded", "Model", "open_feature_store"]
