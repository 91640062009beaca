"""A data path no preset named is a ConfigError saying how to name it, never a read of ''."""

import pytest

from mvptr.core.config import Config, load_config
from mvptr.core.errors import ConfigError
from mvptr.data.pretrain import caption_records, corpora, data_captions


@pytest.mark.parametrize("read, key", [(lambda d: corpora(d), "data.captions"),
                                       (lambda d: corpora(d, needs=("features",)), "data.features"),
                                       (lambda d: data_captions(d), "data.captions"),
                                       (lambda d: caption_records(d, "train"), "data.captions")])
def test_an_unset_data_path_is_a_config_error(read, key):
    with pytest.raises(ConfigError, match=f"{key} is not set.*data.root"):
        read(Config().data)


def test_a_preset_names_them():
    parts = corpora(load_config("tiny", ["data.root=/w"]).data)
    assert (parts[0].captions, parts[0].features, parts[0].phrase_cache) == (
        "/w/captions.json", "/w/features.tsv", "/w/phrases/phrase_cache.jsonl")
