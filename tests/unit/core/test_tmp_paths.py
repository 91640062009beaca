"""Temporary paths are unique per writer: two processes or threads writing one file or one
directory never share a temporary name, and stale ones of a process that is gone are removed."""

import os
import subprocess
import sys

from mvptr.core import fileio
from mvptr.core.fileio import tmp_dir, write_text_atomic


def test_two_atomic_writes_of_one_file_use_different_temporary_names(tmp_path, monkeypatch):
    used = []
    real = os.replace

    def replace(src, dst):
        used.append(str(src))
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    write_text_atomic(tmp_path / "a.json", "1")
    write_text_atomic(tmp_path / "a.json", "2")
    assert len(set(used)) == 2 and str(tmp_path / "a.json.tmp") not in used
    assert (tmp_path / "a.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == oct(0o666 & ~fileio.UMASK)


def test_directories_are_built_under_names_of_their_own(tmp_path):
    a, b = tmp_dir(tmp_path / "model"), tmp_dir(tmp_path / "model")
    assert a != b and a.is_dir() and b.is_dir()
    assert a.name.startswith(f"model.tmp.{os.getpid()}.")


def test_stale_temporary_directories_of_a_gone_process_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"model.tmp.{int(gone.stdout)}.abc"
    legacy = tmp_path / "model.tmp"
    mine = tmp_dir(tmp_path / "model")
    stale.mkdir()
    legacy.mkdir()
    tmp_dir(tmp_path / "model")
    assert not stale.exists() and not legacy.exists() and mine.exists()
