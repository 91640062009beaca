"""One run at a time in an output directory; the lock dies with its process."""

import signal
import subprocess
import sys
import time

import pytest

from mvptr.cli import main
from mvptr.core.errors import ConfigError
from mvptr.core.fileio import output_lock


@pytest.mark.parametrize("command", [
    lambda out: ["pretrain", "--config", "tiny", f"out_dir={out}"],
    lambda out: ["demo", "--config", "tiny", f"out_dir={out}"],
    lambda out: ["finetune", "vqa", "--model", "nowhere", "--out", str(out), "--config", "tiny"],
    lambda out: ["prepare", "phrases", "--captions", "nowhere.json", "--out", str(out)],
    lambda out: ["features", "extract", "--images", "nowhere", "--out", str(out)],
    lambda out: ["merge-shards", str(out)],
])
def test_a_second_run_into_a_held_directory_stops_with_one_line(tmp_path, capsys, command):
    out = tmp_path / "run"
    with output_lock(out):
        assert main(command(out)) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by another run (pid " in err and "choose another output directory" in err
    assert len(err.strip().splitlines()) == 1


def test_convert_locks_beside_the_store_it_creates(tmp_path, capsys):
    args = ["features", "convert", "--features", "f.tsv", "--predictions", "p.tsv", "--out", str(tmp_path / "store")]
    with output_lock(tmp_path / "store", sibling=True):
        assert main(args) == 2
    assert "in use by another run" in capsys.readouterr().err
    assert not (tmp_path / "store").exists() and not (tmp_path / "store.lock").exists()


def test_the_lock_is_released_on_exit_and_when_its_process_is_killed(tmp_path):
    out = tmp_path / "run"
    with output_lock(out):
        pass
    with output_lock(out):  # released by the first
        with pytest.raises(ConfigError, match="in use by another run"):
            with output_lock(out):
                pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mvptr.core.fileio import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"pid {holder.pid} on .* since "):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    with output_lock(out):  # a killed holder leaves no lock behind
        pass
