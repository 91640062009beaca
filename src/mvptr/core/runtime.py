"""Process-wide torch settings a run asks for: threads and deterministic kernels."""

from __future__ import annotations

import torch

from .config import Config


def configure_torch(cfg: Config) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
