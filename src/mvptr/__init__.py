"""MVPTR: multi-level semantic alignment for vision-language pre-training via multi-stage learning.

``mvptr.app.api`` loads a model and embeds, scores and searches; ``mvptr`` on the command line
prepares data, trains, evaluates and serves.
"""

from .core.version import __version__

__all__ = ["__version__"]
