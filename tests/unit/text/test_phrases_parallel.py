"""Phrase extraction split among forked processes gives the one-process result."""

import multiprocessing as mp

import pytest

from mvptr.text.phrases import PhraseExtractor

CAPTIONS = ["a man riding a big wave", "two green squares next to a red circle", "a dog on top of a table",
            "the small cat is sleeping", "an old woman holding an umbrella on the street"] * 5


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_extraction_matches_one_process():
    extractor = PhraseExtractor()
    one = extractor.extract(CAPTIONS, batch_size=4, progress=False)
    assert extractor.extract(CAPTIONS, batch_size=4, n_process=2, progress=False) == one
    assert ("man", "riding", "wave") in one[0].tuples and ("wave", "big") in one[0].tuples
