"""Shares of a corpus-scale preparation (``--shard I/N``): which items a share takes, where
it writes, and the marker that says it finished. ``mvptr merge-shards`` (workflows) joins them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

from .errors import ConfigError
from .fileio import write_text_atomic

__all__ = ["shard_part", "shard_dir", "finish_shard", "MARKER", "SHARD_DIR_RE"]

MARKER = "shard.json"
SHARD_DIR_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")


def shard_dir(out: str | os.PathLike, part: tuple[int, int]) -> Path:
    return Path(out) / f"shard-{part[0]}-of-{part[1]}"


def finish_shard(directory: str | os.PathLike, kind: str, part: tuple[int, int], inputs: dict, items: int) -> None:
    """Mark a share as done: ``merge-shards`` only merges shares that have this file."""
    marker = {"kind": kind, "shard": list(part), "inputs": inputs, "items": items}
    write_text_atomic(Path(directory) / MARKER, json.dumps(marker, indent=1) + "\n")


def shard_part(items: Sequence, part: tuple[int, int] | None) -> Sequence:
    """Share ``index`` of ``count`` of ``items``, contiguous (the first shares take one more
    when uneven), so the shares in order are ``items``; all of them when ``part`` is None."""
    if part is None:
        return items
    index, count = part
    if not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: expected 0 <= I < N")
    per, extra = divmod(len(items), count)
    start = index * per + min(index, extra)
    return items[start:start + per + (index < extra)]
