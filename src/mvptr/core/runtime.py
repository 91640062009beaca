"""Process-wide torch settings a run asks for (threads, deterministic kernels), and where a
run ran (commit and machine), for the records of measured results."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from .config import Config


def configure_torch(cfg: Config) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)


def provenance(device: str) -> dict:
    """The commit of the source (when it is a git checkout) and the machine a run ran on."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}"
    if device.startswith("cuda") and torch.cuda.is_available():
        machine += f" ({torch.cuda.get_device_name()})"
    return {"commit": commit, "machine": machine}
