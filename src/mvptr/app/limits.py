"""The input limits a :class:`~mvptr.app.api.Model` cuts its inputs to (``data.max_tokens``,
``max_phrases``, ``max_tags``, ``max_regions``): those its model directory records (config.json's
"limits", the ones it was trained with). A config whose limits differ from the record is an
error; other limits are only taken when asked for by name (``limits={"max_regions": 100}``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace

from ..checkpoint.model_dir import LIMIT_KEYS, Bundle
from ..core.config import Config
from ..core.errors import ConfigError, WrongTypeError
from ..core.validation import validate

__all__ = ["check_limits", "run_config"]


def check_limits(limits) -> dict[str, int]:
    """``limits`` as a dict of some of :data:`LIMIT_KEYS` to whole numbers (a TypeError or
    ConfigError saying what was expected otherwise)."""
    if not isinstance(limits, Mapping):
        raise WrongTypeError(f"limits: expected a dict of some of {', '.join(LIMIT_KEYS)} to whole numbers, got "
                             f"{type(limits).__name__}")
    unknown = sorted(str(k) for k in limits if k not in LIMIT_KEYS)
    if unknown:
        raise ConfigError(f"limits: unknown {', '.join(unknown)}; the input limits are {', '.join(LIMIT_KEYS)}")
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise WrongTypeError(f"limits[{key!r}]: expected a whole number, got {type(value).__name__} {value!r:.40}")
    return dict(limits)


def run_config(bundle: Bundle, config: Config | None, limits: Mapping | None, source) -> Config:
    """The config a model runs with: ``config`` (default: the defaults) with the input limits
    ``bundle`` records, then ``limits`` over them. A limit of ``config`` that differs from the
    recorded one and is not in ``limits`` is a :class:`ConfigError` naming both; a directory
    that records no limits (an older mvptr wrote it) takes ``config``'s, or the defaults with a
    warning when no config is given."""
    recorded, override = dict(bundle.limits or {}), check_limits(limits) if limits is not None else {}
    if config is not None:
        clash = [k for k in LIMIT_KEYS if k in recorded and k not in override
                 and getattr(config.data, k) != recorded[k]]
        if clash:
            given = ", ".join(f"data.{k}={getattr(config.data, k)}" for k in clash)
            trained = ", ".join(f"{k}={recorded[k]}" for k in clash)
            raise ConfigError(f"{source}: the config sets {given}, the model was trained with {trained}; leave "
                              f"config out to use the model's limits, or override them by name: limits="
                              f"{ {k: getattr(config.data, k) for k in clash} }")
    missing = [k for k in LIMIT_KEYS if k not in recorded and k not in override]
    base = config if config is not None else Config()
    if missing and config is None:
        d = base.data
        warnings.warn(f"{source}: config.json records no input limits (written by an older mvptr); using the "
                      f"defaults {', '.join(f'data.{k}={getattr(d, k)}' for k in missing)}; pass config= the preset "
                      "the model was trained with", stacklevel=4)
    cfg = replace(base, data=replace(base.data, **{**recorded, **override}))
    validate(cfg)  # an overridden limit in its bounds (max_tokens >= 3, ...)
    d, positions = cfg.data, bundle.model.cfg.max_position
    if d.max_tokens + d.max_phrases > positions:
        raise ConfigError(f"{source}: max_tokens {d.max_tokens} + max_phrases {d.max_phrases} exceed the model's "
                          f"{positions} positions; give limits that fit them")
    return cfg
