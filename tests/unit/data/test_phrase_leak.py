"""MLM cannot read a masked word through a phrase that holds its lemma: the phrases hidden from
the MLM pass are found by where they were parsed from, not by their (lemmatised) words."""

import numpy as np
import pytest
import torch

import mvptr.data.collate as collate_module
from helpers import DIM, VOCAB, write_corpus
from mvptr.core.config import DataConfig
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.data.pretrain import build_pair_dataset
from mvptr.text.phrases import PhraseExtractor, PhraseVocab, phrase_string
from mvptr.text.tokenizer import MASK_ID, WordPieces, load_tokenizer, piece_positions

PIECES = WordPieces(load_tokenizer(), 32)
CAPTIONS = ["older women watching big waves", "two men with dogs"]


@pytest.fixture(scope="module")
def samples():
    parsed = PhraseExtractor().extract(CAPTIONS, progress=False)
    vocab = PhraseVocab({phrase_string(t): 1 for p in parsed for t in p.tuples}, 1)
    ids, offsets = PIECES.captions_with_offsets(CAPTIONS)
    out = []
    for p, tokens, offs in zip(parsed, ids, offsets):
        phrases, spans = vocab.encode_parsed(p)
        out.append({"input_ids": tokens, "phrases": phrases, "phrase_positions": piece_positions(offs, spans)})
    return vocab, out


def _collate(vocab, items, masked_words, monkeypatch, separate=True):
    """Collate with MLM masking exactly the pieces of ``masked_words`` (one set per caption)."""
    real = collate_module.bert_mask

    def given_mask(ids, candidates, prob, mask_value, *args):
        if prob != 0.15:  # not the words
            return real(ids, candidates, prob, mask_value, *args)
        words = [[PIECES.tokenizer.convert_ids_to_tokens(i) for i in it["input_ids"]] for it in items]
        selected = torch.zeros_like(ids, dtype=torch.bool)
        for b, (toks, chosen) in enumerate(zip(words, masked_words)):
            for n, tok in enumerate(toks):
                selected[b, n] = tok in chosen
        return ids.masked_fill(selected, MASK_ID), torch.where(selected, ids, torch.full_like(ids, -100))

    monkeypatch.setattr(collate_module, "bert_mask", given_mask)
    collate = Collator(PIECES, [], len(vocab), 30522,
                       CollateSettings(use_tags=False, masking=Masking(words=0.15), separate_mlm=separate),
                       generator=torch.Generator().manual_seed(0))
    return collate.text(items)


def _shown(vocab, items, batch, key):
    """The phrases of each caption that the pass ``key`` reads unmasked."""
    return [{vocab.phrase(p) for p, row in zip(it["phrases"], batch[key][b]) if row != MASK_ID}
            for b, it in enumerate(items)]


@pytest.mark.parametrize("separate", [True, False])
def test_a_phrase_holding_the_lemma_of_a_masked_word_is_masked_for_mlm(samples, monkeypatch, separate):
    vocab, items = samples
    assert [vocab.phrase(p) for p in items[0]["phrases"]] == ["old woman", "big wave", "woman watching wave"]
    assert [vocab.phrase(p) for p in items[1]["phrases"]] == ["two man", "man with dog"]
    key = "mlm_phrase_ids" if separate else "phrase_ids"
    batch = _collate(vocab, items, [{"women"}, {"men"}], monkeypatch, separate)
    assert _shown(vocab, items, batch, key) == [{"big wave"}, set()]
    batch = _collate(vocab, items, [{"waves"}, {"dogs"}], monkeypatch, separate)
    assert _shown(vocab, items, batch, key) == [{"old woman"}, {"two man"}]
    batch = _collate(vocab, items, [{"older"}, {"two"}], monkeypatch, separate)
    assert _shown(vocab, items, batch, key) == [{"big wave", "woman watching wave"}, {"man with dog"}]
    if separate:  # the pass the other objectives read keeps every phrase
        assert (batch["phrase_ids"][batch["phrase_mask"]] != MASK_ID).all()


def test_the_pair_dataset_gives_each_phrase_the_positions_of_its_words(tmp_path):
    root = write_corpus(tmp_path / "c", ids=["1"])
    data = DataConfig(captions=str(root / "captions.json"), features=str(root / "features.tsv"),
                      predictions=str(root / "predictions.tsv"), phrase_cache=str(root / "phrase_cache.jsonl"))
    ds = build_pair_dataset(data, WordPieces(load_tokenizer(), 16), VOCAB, DIM, "train")
    # "[CLS] a red circle number 1 [SEP]": "red circle" was parsed from pieces 2 and 3
    assert ds[0]["phrases"] == [0] and ds[0]["phrase_positions"] == [[2, 3]]
    # cut to "[CLS] a red [SEP]": only the piece that is left
    ds = build_pair_dataset(data, WordPieces(load_tokenizer(), 4), VOCAB, DIM, "train")
    assert ds[0]["phrase_positions"] == [[2]] and np.asarray(ds[0]["input_ids"]).shape == (4,)
