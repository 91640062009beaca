"""One run at a time in an output directory.

Two runs writing into one directory corrupt each other (a model directory with files of
both, one run's config.yaml beside the other's weights). A run holds an operating-system
lock on ``<dir>/.lock`` while it writes; a second run stops at once with a message naming
the holder. The lock goes with the process however it ends (a crash, SIGKILL), so a stale
lock file never blocks a later run. (flock: it holds across processes on one machine and
on local disks; some network file systems ignore it.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

from .config import ConfigError

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

__all__ = ["output_lock"]


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, sibling: bool = False):
    """Hold the lock of ``directory`` while the body writes into it: ``<directory>/.lock``, or
    with ``sibling`` (for a directory that must not exist yet) ``<directory>.lock`` beside it,
    removed again on release. A second holder gets a :class:`ConfigError`."""
    directory = Path(directory)
    path = directory.with_name(directory.name + ".lock") if sibling else directory / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "holder unknown"
        f.close()
        raise ConfigError(f"{directory} is in use by another run ({holder}); wait for it to finish or choose "
                          "another output directory") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(sys.argv)}\n")
    f.flush()
    try:
        yield
    finally:
        if sibling:
            path.unlink(missing_ok=True)
        else:
            f.truncate(0)
        f.close()
