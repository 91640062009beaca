"""Files written so that a crash never leaves half of one: atomic JSON and text writes,
directory swaps and their recovery, JSON lines that survive a torn append, and the lock that
keeps two runs out of one output directory.

Two runs writing into one directory corrupt each other (a model directory with files of
both, one run's config.yaml beside the other's weights). A run holds an operating-system
lock on ``<dir>/.lock`` while it writes; a second run stops at once with a message naming
the holder. The lock goes with the process however it ends (a crash, SIGKILL), so a stale
lock file never blocks a later run. (flock: it holds across processes on one machine and
on local disks; some network file systems ignore it.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError, FormatError, MvptrError, OutputDirError, SkippedSamples, skip_or_raise

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

__all__ = ["PathLike", "output_lock", "load_json", "write_json", "write_text_atomic", "replace_dir", "recover_dir",
           "append_json_lines", "read_json_lines", "text_line", "tmp_file", "tmp_dir", "naming"]

PathLike = str | os.PathLike
UMASK = os.umask(0o022)
os.umask(UMASK)


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


@contextlib.contextmanager
def naming(path: PathLike):
    """An OSError of the body without a file name (a write to an open file on a full disk)
    gets ``path``'s, so that its message says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None or isinstance(err, MvptrError):
            raise
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place: a reader sees the old file or the
    new one (a full disk leaves the old one as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_file(path)
    try:
        with naming(path), open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def tmp_file(path: PathLike) -> Path:
    """A new empty file beside ``path`` (``NAME.<random>.tmp``) that no other process or thread
    writes: two writers of one file never share a temporary name."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~UMASK)  # the permissions an ordinary new file gets, not mkstemp's 0600
    return Path(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_dir(final: PathLike) -> Path:
    """A new directory beside ``final`` to build it in before :func:`replace_dir` swaps it in:
    ``NAME.tmp.<pid>.<random>``, unique per process and call. Those left by a process that is
    gone (a crash, SIGKILL), and the ``NAME.tmp`` of earlier versions, are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    legacy = final.with_name(final.name + ".tmp")
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
    for stale in final.parent.glob(glob_escape(final.name) + ".tmp.*"):
        pid = stale.name[len(final.name) + 5:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f"{final.name}.tmp.{os.getpid()}.", dir=final.parent)
    os.chmod(tmp, 0o777 & ~UMASK)
    return Path(tmp)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """``obj`` as JSON, written atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=indent))


def load_json(path: PathLike) -> Any:
    """A JSON document; a missing or unparsable file is a FormatError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark (Windows editors) is read past
            return json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found", "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: expected a JSON document: {e}") from None



def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place; the old one survives until the new one is there."""
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    old = final.with_name(final.name + ".old")
    if old.exists():
        if not final.exists():  # an earlier swap was cut between its two renames
            old.rename(final)
        else:
            shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _fsync(final.parent)  # the renames themselves reach the disk
    if old.exists():
        shutil.rmtree(old)


def recover_dir(path: str | Path) -> Path:
    """Finish a swap that was killed between its renames: the previous directory comes back."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)
    return path


def _cut_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (an append interrupted by a crash or a full disk), reading
    backwards from the end, so the next append starts a line of its own."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return
    with f:
        end = pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            if pos == end and block.endswith(b"\n"):
                return
            k = block.rfind(b"\n")
            if k >= 0:
                f.truncate(pos - step + k + 1)
                return
            pos -= step
        f.truncate(0)


def append_json_lines(path: PathLike, records: Iterable[Any]) -> None:
    """Append JSON lines in one write after cutting a torn tail: a crash at any point leaves
    whole lines and at most one torn last line, which :func:`read_json_lines` passes over."""
    path = Path(path)
    _cut_torn_tail(path)
    text = "".join(json.dumps(r) + "\n" for r in records)
    with naming(path), open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def read_text(path: PathLike) -> str:
    """A UTF-8 text file of the user's; a missing file or a byte that is not UTF-8 is a
    FormatError naming the file (and the line of the byte)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found", "file not found") from None
    except UnicodeDecodeError as e:
        line = text_line(path, e.start)
        raise FormatError(f"{path} line {line}: expected UTF-8 text: {e.reason}", "file not UTF-8") from None


def text_line(path: PathLike, offset: int) -> int:
    """The 1-based line of byte ``offset`` of a file."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def read_json_lines(path: PathLike, skip: SkippedSamples | None = None):
    """Yield (line number, decoded value) of a JSON-lines file, skipping blank lines.

    An unterminated last line that is not valid JSON (an interrupted append) is ignored;
    any other undecodable line is a FormatError naming the file and line.
    """
    lines = read_text(path).split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # torn tail: the only line without a trailing newline
                return
            skip_or_raise(skip, FormatError(f"{path} line {n}: expected a JSON object: {e}", "bad JSON line"))
            continue
        yield n, value


def check_apart(writes: dict[str, PathLike], reads: dict[str, PathLike | None]) -> None:
    """No output of a command may be one of its inputs, lie inside an input directory or hold an
    input: ``writes`` and ``reads`` map what each path is (for the message) to the path. Checked
    before any work, so a mistyped ``--out`` never replaces the model it was to read."""
    for what_out, out in writes.items():
        o = Path(out).resolve()
        for what_in, src in reads.items():
            if src is None:
                continue
            i = Path(src).resolve()
            if o == i or i in o.parents or o in i.parents:
                how = "is" if o == i else "lies inside" if i in o.parents else "holds"
                raise OutputDirError(f"{what_out} {out} {how} {what_in} {src}: a command never writes over its "
                                     "own input; choose an output elsewhere")


def keep_json_lines(path: PathLike, keep) -> int:
    """Rewrite a JSON-lines log (atomically) with the records ``keep(record)`` accepts, and
    return how many went; a missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return 0
    records = [rec for _, rec in read_json_lines(path)]
    kept = [rec for rec in records if keep(rec)]
    write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in kept))
    return len(records) - len(kept)
