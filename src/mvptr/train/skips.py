"""Training steps skipped because their loss or gradients were not finite.

The trainer skips such a step (the weights stay as they were) and counts it; once a stage
has skipped more than its ``max_skipped_steps`` the run stops with an error that names the
step and the samples of its batch, so that a bad sample never costs steps in silence.
"""

from __future__ import annotations

from ..core.errors import FormatError

__all__ = ["SKIPPED_REASON", "check_skipped_steps", "sample_names"]

SKIPPED_REASON = "loss not finite"


def sample_names(dataset, indices, limit: int = 8) -> str:
    """The samples ``indices`` of ``dataset`` by their ids ("image 12, caption 3"), where the
    dataset can say (a ``describe(i)`` method), else by index; the first ``limit`` of them."""
    describe = getattr(dataset, "describe", None)
    names = [describe(i) if describe is not None else f"sample {i}" for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return "; ".join(names) + more


def check_skipped_steps(stage, skipped: int, step: int, dataset, indices) -> None:
    """Raise once ``skipped`` (the steps this run of the stage skipped for a loss or, outside fp16's
    loss scaling, gradients that were not finite) passes ``stage.max_skipped_steps``; ``step``
    counts from 0, ``indices`` are the dataset indices of the skipped step's batch."""
    if skipped <= stage.max_skipped_steps:
        return
    raise FormatError(f"{stage.name} step {step + 1}: the loss is not finite, {skipped} step"
                      f"{'s' if skipped != 1 else ''} skipped (max_skipped_steps of {stage.name} is "
                      f"{stage.max_skipped_steps}); its batch: {sample_names(dataset, list(indices))}; "
                      "check these samples' features, or allow more skipped steps", SKIPPED_REASON)
