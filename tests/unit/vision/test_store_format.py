"""Which store ``open_store`` opens is decided by what is on disk, said by ``store_format``, and a
path that is neither format is a one-line error naming it."""

import re

import pytest

from mvptr.core.errors import ConfigError, FormatError, MissingFileError, MvptrError
from mvptr.vision.stores import CorpusStores, FeatureStore, MemmapStore, TSVStore, open_store, store_format


def test_a_directory_with_meta_json_is_a_memmap_store(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "meta.json").write_text("{}")
    assert store_format(tmp_path / "store") == "memmap"
    assert store_format(str(tmp_path / "store")) == "memmap"


def test_a_file_is_a_vinvl_tsv(tmp_path):
    (tmp_path / "features.tsv").write_text("")
    assert store_format(tmp_path / "features.tsv") == "vinvl-tsv"


def test_a_directory_without_meta_json_is_neither(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FormatError, match=re.escape(str(tmp_path / "images" / "meta.json")) + ".*not a feature store"):
        store_format(tmp_path / "images")
    with pytest.raises(FormatError, match="not a feature store"):
        open_store(str(tmp_path / "images"), "", 134)


def test_nothing_there_is_a_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "nowhere")) + ": no feature store"):
        open_store(str(tmp_path / "nowhere"), str(tmp_path / "predictions.tsv"), 134)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingFileError, MvptrError)


def test_a_vinvl_file_needs_its_predictions(tmp_path):
    (tmp_path / "features.tsv").write_text("")
    with pytest.raises(ConfigError, match="predictions.tsv"):
        open_store(str(tmp_path / "features.tsv"), "", 134)


@pytest.mark.parametrize("cls", [TSVStore, MemmapStore, CorpusStores])
def test_every_store_keeps_the_feature_store_contract(cls):
    assert issubclass(cls, FeatureStore)


def test_the_contract_is_checked_not_assumed():
    class NoDetections:
        def __len__(self): return 0
        def __contains__(self, image_id): return False
        def ids(self): return []
        def __getitem__(self, image_id): return {}

    assert not isinstance(NoDetections(), FeatureStore)
