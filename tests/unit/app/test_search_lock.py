"""Two ``search build`` runs into one index directory: the second stops with the lock message
while the first builds, and the first's index is the one left."""

import json
import threading

import pytest

import mvptr.app.search as search
from mvptr.cli import main
from serve_helpers import tiny_model

pytestmark = pytest.mark.slow  # builds a model


@pytest.fixture(scope="module")
def model_dir(world_args, tmp_path_factory):
    return tiny_model(world_args, tmp_path_factory.mktemp("lock"))


def test_a_second_build_into_one_index_stops_at_the_lock(model_dir, world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "index"
    started, release = threading.Event(), threading.Event()
    real_embed = search._embed

    def slow_embed(*args, **kwargs):
        started.set()
        assert release.wait(120)
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(search, "_embed", slow_embed)
    argv = ["search", "build", "--model", str(model_dir), "--config", "tiny", "--features",
            str(world / "features.tsv"), "--predictions", str(world / "predictions.tsv"), "--out", str(out)]
    first: dict = {}
    thread = threading.Thread(target=lambda: first.setdefault("rc", main(argv)))
    thread.start()
    try:
        assert started.wait(120)
        monkeypatch.setattr(search, "_embed", real_embed)
        capsys.readouterr()
        second = main([*argv[:-1], str(out)])
        err = capsys.readouterr().err
    finally:
        release.set()
        thread.join(120)
    assert second == 2, err
    assert f"{out} is in use by another run" in err and "Traceback" not in err
    assert first["rc"] == 0
    assert json.loads((out / "index.json").read_text())["images"] > 0
    assert not list(tmp_path.glob("index.tmp*"))
