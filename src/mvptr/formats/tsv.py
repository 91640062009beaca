"""TSV files with a ``.lineidx`` of row byte offsets, for random access (VinVL, Oscar)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..core.errors import FormatError
from ..core.fileio import PathLike, tmp_file


def _lineidx_path(tsv_path: PathLike) -> Path:
    p = Path(tsv_path)
    return p.with_suffix(".lineidx")


def _write_tsv(tsv_path: PathLike, rows: Iterable[Sequence[str]]) -> None:
    """Write tab-separated rows and the matching ``.lineidx`` of row byte offsets."""
    offsets = []
    with open(tsv_path, "wb") as f:
        for fields in rows:
            offsets.append(f.tell())
            f.write("\t".join(fields).encode("utf-8") + b"\n")
    with open(_lineidx_path(tsv_path), "w", encoding="ascii") as f:
        f.writelines(f"{o}\n" for o in offsets)


def concat_tsv(parts: Sequence[PathLike], out_path: PathLike) -> int:
    """Write the rows of the TSV files ``parts``, in order, to ``out_path`` with its ``.lineidx``
    (each part's offsets shifted by the bytes before it); returns the number of rows. Both
    files appear complete or not at all (written under temporary names, then renamed)."""
    out_path = Path(out_path)
    tmp_tsv, tmp_idx = tmp_file(out_path), tmp_file(_lineidx_path(out_path))
    rows, base = 0, 0
    with open(tmp_tsv, "wb") as f, open(tmp_idx, "w", encoding="ascii") as idx:
        for part in parts:
            tsv = TSVFile(part)  # checks the part and its index
            idx.writelines(f"{base + int(o)}\n" for o in tsv._offsets)
            rows += len(tsv)
            with open(part, "rb") as src:
                last = b"\n"
                while data := src.read(1 << 22):
                    f.write(data)
                    last = data[-1:]
            if last != b"\n":  # a last row without its newline would run into the next part's first
                f.write(b"\n")
            base = f.tell()
    os.replace(tmp_idx, _lineidx_path(out_path))
    os.replace(tmp_tsv, out_path)
    return rows


def build_lineidx(tsv_path: PathLike) -> Path:
    """Create ``<stem>.lineidx`` for an existing TSV file; returns its path."""
    out = _lineidx_path(tsv_path)
    try:
        with open(tsv_path, "rb") as f, open(out, "w", encoding="ascii") as idx:
            offset = 0
            for line in f:
                idx.write(f"{offset}\n")
                offset += len(line)
    except FileNotFoundError:
        raise FormatError(f"{tsv_path}: file not found") from None
    return out


class TSVFile:
    """Random access to the rows of a TSV file through its ``.lineidx`` offsets.

    Rows are read with positional reads (``os.pread``) of one descriptor, so threads can read
    rows at once (a shared file position would let one thread's seek move another's read).
    The descriptor is opened on first use and again in a new process (e.g. a DataLoader
    worker); the object pickles without it.
    """

    def __init__(self, path: PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FormatError(f"{self.path}: file not found", "file not found")
        idx_path = _lineidx_path(self.path)
        if not idx_path.is_file():
            raise FormatError(
                f"{self.path}: index {idx_path} not found; create it with "
                f"mvptr.formats.tsv.build_lineidx({self.path!r})")
        offsets = []
        with open(idx_path, encoding="ascii", errors="replace") as f:
            for n, line in enumerate(f, 1):
                try:
                    offsets.append(int(line))
                except ValueError:
                    raise FormatError(f"{idx_path} line {n}: expected a decimal byte offset, "
                                      f"got {line.strip()!r}") from None
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._check_index(idx_path)
        self._size = os.path.getsize(self.path)
        self._fd = None
        self._pid = None
        self._open_lock = threading.Lock()

    def _check_index(self, idx_path: Path) -> None:
        """Rows start at 0, rise, each just after a newline, and the last ends the file: an index
        left from an earlier version of the TSV (rows appended, rewritten) is refused here, not
        met later as images that seem to have no features."""
        o, size = self._offsets, os.path.getsize(self.path)
        problem = None
        if len(o) == 0:
            problem = f"it lists no rows but the file has {size} bytes" if size else None
        elif o[0] != 0 or (np.diff(o) <= 0).any() or o[-1] >= size:
            problem = f"its offsets do not rise from 0 within the file's {size} bytes"
        else:
            with open(self.path, "rb") as f:
                f.seek(max(int(o[-1]) - 1, 0))
                before = f.read(1) if o[-1] else b"\n"
                f.seek(int(o[-1]))
                last = f.readline()
            if before != b"\n":
                problem = f"row {len(o)} does not start a line"
            elif o[-1] + len(last) != size:
                problem = f"it indexes {len(o)} rows, but the file goes on after them"
        if problem:
            raise FormatError(f"{idx_path} does not match {self.path}: {problem}; rebuild it with "
                              f"mvptr.formats.tsv.build_lineidx({self.path!r})", "stale index")

    def __len__(self) -> int:
        return len(self._offsets)

    def _descriptor(self) -> int:
        """The file's descriptor, read only with positional reads (``os.pread``): it has no
        position that threads could move under each other."""
        if self._fd is None or self._pid != os.getpid():
            with self._open_lock:
                if self._fd is None or self._pid != os.getpid():
                    self._fd = os.open(self.path, os.O_RDONLY)
                    self._pid = os.getpid()
        return self._fd

    def _span(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: row {i} out of range (file has {len(self)} rows)")
        end = int(self._offsets[i + 1]) if i + 1 < len(self) else self._size
        return int(self._offsets[i]), end

    def raw(self, i: int) -> bytes:
        """The bytes of row ``i``, its newline included (safe to call from several threads)."""
        start, end = self._span(i)
        line = os.pread(self._descriptor(), end - start, start)
        if len(line) < end - start:
            raise FormatError(f"{self.path} line {i + 1}: offset past the end of the file; "
                              f"the .lineidx is stale, rebuild it with build_lineidx", "stale index")
        return line

    def row(self, i: int) -> list[str]:
        """Fields of row ``i`` (line ``i + 1``)."""
        line = self.raw(i)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{self.path} line {i + 1}: expected UTF-8 text: {e}", "not UTF-8") from None
        return text.rstrip("\r\n").split("\t")

    def key(self, i: int) -> str:
        """First field of row ``i``, read without loading the rest of a long row."""
        start, end = self._span(i)
        fd, buf, pos = self._descriptor(), b"", start
        while pos < end:
            chunk = os.pread(fd, min(256, end - pos), pos)
            if not chunk:
                break
            buf, pos = buf + chunk, pos + len(chunk)
            stop = min((p for p in (buf.find(b"\t"), buf.find(b"\n")) if p >= 0), default=-1)
            if stop >= 0:
                return buf[:stop].decode("utf-8", errors="replace")
        return buf.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_fd=None, _pid=None, _open_lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open_lock = threading.Lock()
