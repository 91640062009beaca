"""The one table of pre-training objectives, and what reads it.

``OBJECTIVES`` maps each name to its declaration (``objective.Objective``): the paper's six
(``builtin_objectives.py``), then any added with :func:`register_objective`. A stage lists
the objectives it trains (``stage.objectives``); the recipe's loss is the weighted sum of
their losses (``recipes.py``), the collator masks what they ask for (:func:`stage_masking`),
the configuration accepts their names (``mvptr.core.objectives``) and the training curves
draw one panel each. Adding an objective is one declaration and one call::

    register_objective(Objective("my_loss", my_loss_fn, "my loss", cross_modal=True))
"""

from __future__ import annotations

from ..core.config import ObjectiveConfig
from ..core.errors import ConfigError, WrongTypeError
from ..core.objectives import OBJECTIVES, switched_objectives, switched_on
from ..data.collate import Masking
from .builtin_objectives import BUILTIN
from .objective import MASKED_INPUTS, Objective

__all__ = ["OBJECTIVES", "Objective", "register_objective", "unregister_objective", "active_objectives",
           "stage_masking"]

OBJECTIVES.update({o.name: o for o in BUILTIN})


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` to the table; a stage trains it once it lists its name (``stage2.objectives``),
    weighted by ``objective.weight`` unless ``stage2.loss_weights.<name>`` says otherwise. A name
    taken already is an error."""
    if not isinstance(objective, Objective):
        raise WrongTypeError(f"register_objective takes an Objective, not {type(objective).__name__}")
    if objective.name in OBJECTIVES or objective.name in switched_objectives(ObjectiveConfig()):
        raise ConfigError(f"an objective named {objective.name!r} exists already")
    OBJECTIVES[objective.name] = objective
    return objective


def unregister_objective(name: str) -> None:
    """Remove an objective added with :func:`register_objective` (the built-in ones stay)."""
    if name in {o.name for o in BUILTIN}:
        raise ConfigError(f"{name!r} is a built-in objective; switch it off with objectives.{name}=false")
    OBJECTIVES.pop(name, None)


def active_objectives(names: list[str], obj: ObjectiveConfig) -> list[Objective]:
    """The declarations of the objectives in ``names`` that are switched on, in the table's order
    (the order their losses are computed and summed in). An unknown name is a ValueError."""
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown objectives {unknown} (known: {', '.join(OBJECTIVES)})")
    return [o for name, o in OBJECTIVES.items() if name in names and switched_on(obj, name)]


def stage_masking(obj: ObjectiveConfig, names: list[str]) -> Masking:
    """The masking of a stage's objectives that are on: an objective that is off (not in the
    stage's list, or by its ``objectives.<name>`` switch, or by an input it reads) corrupts no input."""
    running = [o for o in active_objectives(names, obj) if o.inputs_on(obj)]
    masked = {o.masks for o in running if o.masks}
    probs = {kind: getattr(obj, setting) if kind in masked else 0.0 for kind, setting in MASKED_INPUTS.items()}
    return Masking(**probs, tie_phrases=obj.phrase_mask_tied and "phrases" in masked)
