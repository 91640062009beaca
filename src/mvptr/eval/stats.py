"""Confidence intervals over seeds: a difference counts only when its interval excludes zero.

Each training seed gives one figure; the interval of their mean is Student's t interval
(the seeds are few, and their spread is estimated from themselves). A difference between
two settings run on the same seeds is read from the per-seed differences (a paired
interval), which removes what the seeds share (the world, the stage-1 model, the data order).
"""

from __future__ import annotations

import math
import statistics

from scipy.stats import t as student_t

from ..core.errors import ConfigError, NotFiniteError


def mean_interval(values, level: float = 0.95) -> dict:
    """``{"mean", "half_width", "n"}``: the mean of ``values`` and the half width of its
    ``level`` confidence interval. Two values at least are needed (one has no spread); NaN
    is an error, never averaged into a figure."""
    xs = [float(v) for v in values]
    if len(xs) < 2:
        raise ConfigError(f"a confidence interval needs at least 2 values (one per seed), got {len(xs)}")
    if any(math.isnan(x) for x in xs):
        raise NotFiniteError(f"a confidence interval of NaN values: {xs}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    sd = statistics.stdev(xs)
    half = float(student_t.ppf(0.5 + level / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return {"mean": statistics.fmean(xs), "half_width": half, "n": len(xs)}


def paired_difference(a, b, level: float = 0.95) -> dict:
    """The interval of mean(a - b) over paired values (the same seeds), and its verdict:
    "a higher", "b higher" or "undecided" (the interval holds zero)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    d = mean_interval([x - y for x, y in zip(a, b)], level)
    lo, hi = d["mean"] - d["half_width"], d["mean"] + d["half_width"]
    d["verdict"] = "a higher" if lo > 0 else "b higher" if hi < 0 else "undecided"
    return d


def format_interval(d: dict, digits: int = 2) -> str:
    return f"{d['mean']:.{digits}f} ± {d['half_width']:.{digits}f}"
