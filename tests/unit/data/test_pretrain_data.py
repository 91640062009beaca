"""The collator: padding, the 80/10/10 masking, and the two tag readings."""

import numpy as np
import torch

from mvptr.data.collate import CollateSettings, Collator, Masking, bert_mask
from mvptr.text.tokenizer import IGNORE, MASK_ID, WordPieces, load_tokenizer

TOK = load_tokenizer()
VOCAB = 30522


def items(n=4):
    rng = np.random.default_rng(0)
    pieces = WordPieces(TOK, 16)
    caps = pieces.captions(["a big red circle", "a small blue traffic light above a square", "two shapes", "a cat"][:n])
    return [
        {
            "input_ids": caps[i],
            "phrases": [0, 2][: i % 3],
            "tags": ["circle", "traffic light", "zebra crossing"][: 1 + i % 3],
            "region_feats": rng.standard_normal((2 + i, 134)).astype(np.float32),
            "boxes": np.tile(np.array([0, 0, 10, 10], np.float32), (2 + i, 1)),
            "width": 96.0,
            "height": 96.0,
            "image_index": i,
        }
        for i in range(n)
    ]


def test_unmasked_batch_shapes_and_padding():
    c = Collator(WordPieces(TOK, 16), ["circle", "traffic light"], num_phrases=3, vocab_size=VOCAB)
    b = c(items())
    assert b["input_ids"].shape[0] == 4 and (b["mlm_labels"] == IGNORE).all()
    assert b["region_feats"].shape == (4, 5, 134)
    assert b["region_mask"].sum(1).tolist() == [2, 3, 4, 5]
    # phrase rows are placed after the word rows of the shared table
    assert b["phrase_ids"][1, 0].item() == VOCAB + 0
    # concept mode: one unit per tag; "traffic light" is two pieces in one unit
    assert b["tag_pieces"].shape[:2] == (4, 3)
    light = TOK("traffic light", add_special_tokens=False)["input_ids"]
    assert b["tag_pieces"][1, 1, : len(light)].tolist() == light
    # a tag class unseen in training is embedded but never a target
    assert (b["tag_labels"] == IGNORE).all()


def test_word_piece_mode_makes_each_piece_a_unit():
    c = Collator(WordPieces(TOK, 16), ["circle", "traffic light"], 3, VOCAB, CollateSettings(tag_mode="word_pieces"))
    b = c(items())
    light = TOK("traffic light", add_special_tokens=False)["input_ids"]
    assert b["tag_pieces"].shape[-1] == 1
    assert b["tag_pieces"][1, 1 : 1 + len(light), 0].tolist() == light


def test_masked_labels_are_the_original_ids_and_specials_are_never_masked():
    gen = torch.Generator().manual_seed(0)
    c = Collator(WordPieces(TOK, 16), ["circle", "traffic light", "zebra crossing"], 3, VOCAB,
                 CollateSettings(masking=Masking(words=0.5, phrases=0.5, tags=0.5)), generator=gen)
    clean = Collator(WordPieces(TOK, 16), ["circle", "traffic light", "zebra crossing"], 3, VOCAB)
    its = items() * 8
    b, ref = c(its), clean(its)
    sel = b["mlm_labels"] != IGNORE
    assert sel.any()
    assert torch.equal(b["mlm_labels"][sel], ref["input_ids"][sel])
    assert not sel[ref["input_ids"] == TOK.cls_token_id].any()
    assert not sel[ref["input_ids"] == TOK.sep_token_id].any()
    tag_sel = b["tag_labels"] != IGNORE
    assert tag_sel.any()
    # a masked tag that became [MASK] has the [MASK] piece only
    masked_rows = b["tag_pieces"][tag_sel]
    assert (masked_rows[:, 0] == MASK_ID).any()
    phrase_sel = b["phrase_labels"] != IGNORE
    assert torch.equal(b["phrase_labels"][phrase_sel] + VOCAB, ref["phrase_ids"][phrase_sel])


def test_bert_mask_proportions():
    gen = torch.Generator().manual_seed(0)
    ids = torch.full((200, 100), 5000)
    out, labels = bert_mask(ids, torch.ones_like(ids, dtype=torch.bool), 0.25, MASK_ID, (999, VOCAB), gen)
    sel = labels != IGNORE
    assert abs(sel.float().mean().item() - 0.25) < 0.01
    assert abs((out[sel] == MASK_ID).float().mean().item() - 0.8) < 0.02
    assert abs((out[sel] == 5000).float().mean().item() - 0.1) < 0.02


def test_mlm_masks_a_separate_copy_unless_the_pass_is_shared():
    gen = torch.Generator().manual_seed(0)
    names = ["circle", "traffic light", "zebra crossing"]
    separate = Collator(WordPieces(TOK, 16), names, 3, VOCAB, CollateSettings(masking=Masking(words=0.5)),
                        generator=gen)
    clean = Collator(WordPieces(TOK, 16), names, 3, VOCAB)
    its = items() * 4
    b, ref = separate(its), clean(its)
    assert torch.equal(b["input_ids"], ref["input_ids"])  # the alignment objectives see every word
    sel = b["mlm_labels"] != IGNORE
    assert sel.any() and (b["mlm_input_ids"][sel] != ref["input_ids"][sel]).any()
    shared = Collator(WordPieces(TOK, 16), names, 3, VOCAB,
                      CollateSettings(masking=Masking(words=0.5), separate_mlm=False),
                      generator=torch.Generator().manual_seed(0))
    s = shared(its)
    assert "mlm_input_ids" not in s
    assert torch.equal(s["input_ids"], b["mlm_input_ids"])
