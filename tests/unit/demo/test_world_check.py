"""A demo world on disk made with other settings is refused, not silently reused."""

import json

import pytest

from mvptr.core.config import DemoConfig
from mvptr.core.errors import ConfigError
from mvptr.demo.run import check_world


def write_world(root, seed=0, sizes=(96, 8, 24), image_size=96):
    splits = dict(zip(("train", "val", "test"), sizes))
    (root / "world.json").write_text(json.dumps({"seed": seed, "image_size": image_size, "splits": splits}))


def test_the_same_settings_pass(tmp_path):
    write_world(tmp_path)
    check_world(tmp_path, DemoConfig(n_train=96, n_val=8, n_test=24))


@pytest.mark.parametrize("settings, named", [
    (dict(world_seed=1), "seed 0 -> 1"),
    (dict(n_train=100), "splits"),
    (dict(image_size=64), "image_size 96 -> 64"),
])
def test_another_seed_size_or_split_is_refused(tmp_path, settings, named):
    write_world(tmp_path)
    with pytest.raises(ConfigError, match="made with other settings") as err:
        check_world(tmp_path, DemoConfig(**{"n_train": 96, "n_val": 8, "n_test": 24, **settings}))
    assert named in str(err.value) and "world.json" in str(err.value)


def test_a_directory_without_world_json_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no world.json"):
        check_world(tmp_path, DemoConfig())
