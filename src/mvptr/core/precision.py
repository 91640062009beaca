"""Mixed precision: one name per precision, one autocast context for training and evaluation.

"auto" is bf16 where the device multiplies bf16 natively (a GPU with bf16, a CPU with AMX or
AVX512-BF16 through oneDNN) and fp32 elsewhere, where emulated bf16 would be slower."""

from __future__ import annotations

import torch

from .errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = (*PRECISIONS, "auto")


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products in hardware."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        cpu = torch.cpu  # torch's own capability probes (private, so absent ones count as no)
        return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported",
                                                                      "_is_avx512_bf16_supported"))
    return False


def resolve(precision: str, device: str | torch.device) -> str:
    """The precision a run uses on ``device``: "auto" becomes "bf16" or "fp32"."""
    if precision not in CHOICES:
        raise ConfigError(f"unknown precision {precision!r} (expected one of {', '.join(CHOICES)})")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: str | torch.device, precision: str):
    """``torch.autocast`` for "bf16" / "fp16" (and "auto" where it means bf16); a context that
    changes nothing for "fp32"."""
    dtype = PRECISIONS[resolve(precision, device)]
    return torch.autocast(str(device).split(":")[0], dtype=dtype, enabled=dtype is not None)
