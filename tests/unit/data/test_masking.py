"""Masking follows the objectives that are on, and MLM cannot read a masked word from a phrase."""

import numpy as np
import pytest
import torch

from mvptr.core.config import ObjectiveConfig, load_config
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.model.modeling import MVPTR
from mvptr.text.tokenizer import IGNORE, MASK_ID, WordPieces, load_tokenizer, piece_positions
from mvptr.train.objectives import stage_masking
from mvptr.train.recipes import pretraining_losses

TOK = load_tokenizer()
PIECES = WordPieces(TOK, 16)
VOCAB = 30522
ALL = ["mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"]
# the phrase vocabulary of these tests: the words of each phrase
PHRASES = [("big", "wave"), ("small", "boat"), ("wave",), ("red", "kite")]


@pytest.mark.parametrize("off, field", [("mcr_v", "tags"), ("mcr_s", "phrases"), ("mlm", "words")])
def test_an_objective_switched_off_masks_nothing(off, field):
    obj = ObjectiveConfig(**{off: False})
    masking = stage_masking(obj, ALL)  # the stage still lists it
    assert getattr(masking, field) == 0.0
    assert all(getattr(masking, f) > 0 for f in ("tags", "phrases", "words") if f != field)
    assert getattr(stage_masking(ObjectiveConfig(), ALL), field) > 0


def test_a_switched_off_objective_leaves_its_inputs_whole_in_a_collated_batch():
    obj = ObjectiveConfig(mcr_v=False, mcr_s=False, mlm=False, mlm_separate_pass=False)
    collate = Collator(PIECES, ["circle"], len(PHRASES), VOCAB,
                       CollateSettings(masking=stage_masking(obj, ALL), separate_mlm=False),
                       generator=torch.Generator().manual_seed(0))
    b = collate(items() * 16)
    clean = Collator(PIECES, ["circle"], len(PHRASES), VOCAB)(items() * 16)
    for key in ("input_ids", "phrase_ids", "tag_pieces"):
        assert torch.equal(b[key], clean[key]), key
    for key in ("mlm_labels", "phrase_labels", "tag_labels"):
        assert (b[key] == IGNORE).all(), key


def items():
    rng = np.random.default_rng(0)
    texts = ["a big wave near a small boat", "a red kite over a wave", "a small boat"]
    caps, offsets = PIECES.captions_with_offsets(texts)
    phrases = [[0, 1, 2], [3, 2], [1]]
    # each phrase was parsed from the last place its words stand in the caption
    spans = [[[(t.rfind(w), t.rfind(w) + len(w)) for w in PHRASES[j]] for j in p] for t, p in zip(texts, phrases)]
    return [{"input_ids": c, "phrases": p, "phrase_positions": piece_positions(o, s), "tags": ["circle"],
             "image_index": i, "region_feats": rng.standard_normal((3, 134)).astype(np.float32),
             "boxes": np.tile(np.array([0, 0, 10, 10], np.float32), (3, 1)), "width": 96.0, "height": 96.0}
            for i, (c, o, s, p) in enumerate(zip(caps, offsets, spans, phrases))]


def expected_leaks(batch, its):
    """Naively: phrase j of caption b was parsed from a piece that MLM masked in caption b."""
    out = torch.zeros(batch["phrase_mask"].shape, dtype=torch.bool)
    for b, it in enumerate(its):
        for j, positions in enumerate(it["phrase_positions"]):
            out[b, j] = any(batch["mlm_labels"][b, n] != IGNORE for n in positions)
    return out


@pytest.mark.parametrize("separate", [True, False])
def test_every_phrase_holding_a_masked_word_is_masked_in_the_mlm_pass(separate):
    its = items() * 20
    collate = Collator(PIECES, ["circle"], len(PHRASES), VOCAB,
                       CollateSettings(masking=Masking(words=0.3), separate_mlm=separate),
                       generator=torch.Generator().manual_seed(0))
    b = collate(its)
    clean = Collator(PIECES, ["circle"], len(PHRASES), VOCAB)(its)
    leaks = expected_leaks(b, its)
    assert leaks.any() and (b["phrase_mask"] & ~leaks).any()
    mlm_phrases = b["mlm_phrase_ids"] if separate else b["phrase_ids"]
    assert (mlm_phrases[leaks] == MASK_ID).all()
    keep = b["phrase_mask"] & ~leaks
    assert torch.equal(mlm_phrases[keep], clean["phrase_ids"][keep])
    if separate:  # the pass the alignment objectives read keeps every phrase
        assert torch.equal(b["phrase_ids"], clean["phrase_ids"])
    assert (b["phrase_labels"] == IGNORE).all()  # not tied: no MCR^s target
    assert torch.equal(b["phrase_masked"], (b["phrase_ids"] == MASK_ID) & b["phrase_mask"])


def test_without_positions_every_phrase_of_a_sample_with_a_masked_word_is_masked_in_the_mlm_pass():
    its = [{k: v for k, v in it.items() if k != "phrase_positions"} for it in items() * 4]
    b = Collator(PIECES, ["circle"], len(PHRASES), VOCAB, CollateSettings(masking=Masking(words=0.3)),
                 generator=torch.Generator().manual_seed(0))(its)
    some = (b["mlm_labels"] != IGNORE).any(1)[:, None] & b["phrase_mask"]  # a sample with a masked word
    assert some.any() and (b["mlm_phrase_ids"][some] == MASK_ID).all()
    rest = b["phrase_mask"] & ~some
    assert rest.any() and (b["mlm_phrase_ids"][rest] != MASK_ID).all()
    # no word masked (a task's collator): nothing is hidden, with or without positions
    clean = Collator(PIECES, ["circle"], len(PHRASES), VOCAB)(its)
    assert (clean["phrase_ids"][clean["phrase_mask"]] != MASK_ID).all() and "mlm_phrase_ids" in clean
    assert torch.equal(clean["mlm_phrase_ids"], clean["phrase_ids"])


def test_tied_masking_makes_the_phrases_of_masked_words_mcr_targets():
    its = items() * 20
    collate = Collator(PIECES, ["circle"], len(PHRASES), VOCAB,
                       CollateSettings(masking=Masking(words=0.3, tie_phrases=True), separate_mlm=False),
                       generator=torch.Generator().manual_seed(0))
    b = collate(its)
    leaks = expected_leaks(b, its)
    phrases = torch.tensor([p + [-1] * (3 - len(p)) for p in (it["phrases"] for it in its)])
    assert torch.equal(b["phrase_labels"][leaks], phrases[leaks])
    assert (b["phrase_labels"][~leaks] == IGNORE).all() and (b["phrase_ids"][leaks] == MASK_ID).all()
    assert stage_masking(ObjectiveConfig(phrase_mask_tied=True), ALL).tie_phrases


def test_the_mlm_pass_reads_the_masked_phrases():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = MVPTR(cfg.model, len(PHRASES), torch.tensor([[4418, 0]]))
    its = items() * 4
    b = Collator(PIECES, ["circle"], len(PHRASES), VOCAB, CollateSettings(masking=Masking(words=0.5)),
                 generator=torch.Generator().manual_seed(0))(its)
    seen = []
    encode = model.encode_text
    model.encode_text = lambda ids, wm, phrase_ids, pm: seen.append(phrase_ids) or encode(ids, wm, phrase_ids, pm)
    pretraining_losses(model, b, ["mlm"], cfg.objectives, torch.Generator().manual_seed(0))
    assert len(seen) == 2 and torch.equal(seen[1], b["mlm_phrase_ids"]) and (seen[1] == MASK_ID).any()
