"""Process-wide torch settings a run asks for (threads, deterministic kernels), and where a
run ran (commit and machine), for the records of measured results."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import Config


def configure_torch(cfg: Config) -> None:
    """Set the run's torch settings for the rest of the process (the command line); a library
    call uses :func:`torch_settings`, which puts the caller's back."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)


@contextlib.contextmanager
def torch_settings(cfg: Config) -> Iterator[None]:
    """``configure_torch`` for the duration of the block: the thread count and the deterministic
    flag (with its warn-only mode) are restored afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    configure_torch(cfg)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


# glibc's mallopt parameters, and their defaults (malloc/malloc.c: DEFAULT_MMAP_THRESHOLD_MIN,
# DEFAULT_TRIM_THRESHOLD, both 128 KiB)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}
MALLOC_ENV = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def reuse_freed_cpu_memory() -> bool:
    """Keep freed large blocks in the process's heap for the next allocation (glibc only).

    glibc returns every block above its mmap threshold (at most 32 MiB) to the kernel when
    it is freed, so the next one faults in each page anew. Every lookup of the shared
    word/phrase table makes a table-sized gradient in the backward pass (50 MB at the demo
    config): zeroing a fresh one takes 16 ms on this project's CPU, a reused one 3.4 ms.
    Returns whether the allocator took the setting; :func:`freed_cpu_memory_reused` undoes it.
    """
    try:
        libc = _libc()
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 2**30) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc: its allocator decides
        return False


@contextlib.contextmanager
def freed_cpu_memory_reused(on: bool = True) -> Iterator[None]:
    """:func:`reuse_freed_cpu_memory` (when ``on``) for the duration of the block. glibc's mallopt
    has no getter, so afterwards the two thresholds are set back to what the process started
    with: the ``MALLOC_*_THRESHOLD_`` environment variables where they are set, glibc's defaults
    otherwise. (A threshold set explicitly stays fixed: glibc no longer moves the mmap threshold
    up as large blocks are freed, as it does by default; the difference is in speed only.)"""
    took = on and reuse_freed_cpu_memory()
    try:
        yield
    finally:
        if took:
            libc = _libc()
            for param, default in MALLOC_DEFAULTS.items():
                value = os.environ.get(MALLOC_ENV[param], "")
                libc.mallopt(param, int(value) if value.isdigit() else default)


def cpu_model() -> str:
    """The processor's model name (Linux), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def source_commit() -> str:
    """The short commit of the source when it is a git checkout, else "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: str) -> dict:
    """The commit of the source and the machine a run ran on."""
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}"
    if device.startswith("cuda") and torch.cuda.is_available():
        machine += f" ({torch.cuda.get_device_name()})"
    return {"commit": source_commit(), "machine": machine}
