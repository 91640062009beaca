"""Mixed precision: one name per precision, one autocast context for training and evaluation."""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str | torch.device, precision: str):
    """``torch.autocast`` for "bf16" / "fp16"; a context that changes nothing for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    return torch.autocast(str(device).split(":")[0], dtype=dtype, enabled=dtype is not None)
