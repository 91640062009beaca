"""The table of pre-training objectives, by name, as far as the configuration reads it.

Its entries are declarations (``mvptr.train.objectives.Objective``: what an objective masks,
reads and computes), put here by ``mvptr.train.objectives``: the built-in ones when it is
imported, others through its ``register_objective``. The configuration checks the names a
stage lists (``stage.objectives``, ``stage.loss_weights``) against it. A built-in objective is
known before that import by its switch in ``ObjectiveConfig`` (``objectives.<name>``, a field
made with :func:`objective_switch`), so a config loads without the training code.
"""

from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any

# name -> declaration; one table for the whole process (register_objective adds to it)
OBJECTIVES: dict[str, Any] = {}


def objective_switch() -> Field:
    """An ``ObjectiveConfig`` field that switches the objective of its name on (the default) or off."""
    return field(default=True, metadata={"objective": True})


def switched_objectives(objectives_cfg) -> tuple[str, ...]:
    """The objectives that have a switch in ``objectives_cfg`` (an ``ObjectiveConfig``)."""
    return tuple(f.name for f in fields(objectives_cfg) if f.metadata.get("objective"))


def objective_names(objectives_cfg) -> tuple[str, ...]:
    """Every objective a stage may list: those with a switch, then those registered."""
    switched = switched_objectives(objectives_cfg)
    return (*switched, *(name for name in OBJECTIVES if name not in switched))


def switched_on(objectives_cfg, name: str) -> bool:
    """Whether ``name`` is switched on: its ``objectives.<name>``, or True for an objective without a switch."""
    return name not in switched_objectives(objectives_cfg) or bool(getattr(objectives_cfg, name))
