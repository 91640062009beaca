"""Property tests: what a user types or loads, however empty, huge, foreign or malformed, has
defined behaviour (a result that keeps the invariants, or a ValueError that says why)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mvptr.app.api import image_item
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.model.modeling import MVPTR
from mvptr.text.phrases import PhraseVocab, phrase_string
from mvptr.text.tokenizer import IGNORE, WordPieces, load_tokenizer

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TAGS = ["circle", "square", "traffic light", "surfboard"]
FEAT = 134
# any text: unicode of every category, control characters and surrogate-free code points
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


@pytest.fixture(scope="module")
def pieces():
    return WordPieces(load_tokenizer(), max_tokens=24)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = load_config("tiny").model
    return MVPTR(cfg, 7, torch.tensor([[4418, 0], [2675, 0], [4026, 2422], [14175, 6277]])).eval()


@SETTINGS
@given(texts=st.lists(text, min_size=1, max_size=4))
def test_captions_are_cls_pieces_sep_within_the_limit(pieces, texts):
    for ids in pieces.captions(texts):
        assert ids[0] == 101 and ids[-1] == 102 and 2 <= len(ids) <= 24
        assert all(0 <= i < 30522 for i in ids)


@SETTINGS
@given(word=text)
def test_every_word_has_at_least_one_piece(pieces, word):
    got = pieces.pieces(word)
    assert len(got) >= 1 and all(0 <= i < 30522 for i in got)


def test_a_huge_caption_is_cut_to_the_limit(pieces):
    ids = pieces.captions(["a red circle " * 50_000])[0]
    assert len(ids) == 24 and ids[-1] == 102


@pytest.mark.slow
@SETTINGS
@given(tuples=st.lists(st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=5), max_size=8),
       max_phrases=st.integers(0, 6))
def test_phrase_vocabulary_encodes_known_tuples_and_rejects_malformed_ones(tuples, max_phrases):
    vocab = PhraseVocab({"red circle": 5, "circle left of square": 3, "big square": 2}, min_count=1)
    if any(len(t) not in (2, 3) for t in tuples):
        with pytest.raises(ValueError, match="tuple"):
            vocab.encode(tuples)
        return
    ids = vocab.encode(tuples, max_phrases)
    assert len(ids) == len(set(ids)) <= max_phrases and all(0 <= i < len(vocab) for i in ids)
    assert vocab.encode([("circle", "red"), ("circle", "red")]) == [0]
    assert vocab.encode([]) == []  # a caption with no phrases


@pytest.fixture(scope="module")
def extractor():
    from mvptr.text.phrases import PhraseExtractor

    return PhraseExtractor()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(captions=st.lists(st.one_of(text, st.sampled_from(
    ["", " ", "a", "It is.", "A big red circle left of a small blue square.", "!!!", "日本語のテキスト", "\n\t"])),
    min_size=1, max_size=4))
def test_the_phrase_parser_gives_tuples_or_nothing(extractor, captions):
    parsed = extractor.extract(captions, progress=False)
    assert len(parsed) == len(captions)
    for caption, p in zip(captions, parsed):
        assert len(p.spans) == len(p.tuples)
        for t, spans in zip(p.tuples, p.spans):
            assert len(t) in (2, 3) and all(isinstance(w, str) and w for w in t)
            phrase_string(t)  # every tuple has a phrase string
            # and was parsed from words of the caption as given
            assert spans and all(0 <= a < b <= len(caption) and caption[a:b].strip() for a, b in spans)


def item(draw_ids, n_regions, tags, phrases):
    feats = np.random.rand(n_regions, FEAT).astype(np.float32)
    return {"input_ids": draw_ids, "phrases": phrases, "region_feats": feats,
            "boxes": np.tile(np.array([[1, 2, 10, 12]], np.float32), (n_regions, 1)), "tags": tags,
            "width": 64, "height": 64, "image_index": 0}


@st.composite
def batches(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        words = draw(st.lists(st.integers(999, 30521), max_size=10))
        out.append(item([101, *words, 102], draw(st.integers(0, 12)),
                        draw(st.lists(st.sampled_from([*TAGS, "unknown thing", "zebra"]), max_size=6)),
                        draw(st.lists(st.integers(0, 6), max_size=5, unique=True))))
        out[-1]["image_index"] = i
    return out


@pytest.mark.slow
@SETTINGS
@given(items=batches(), tag_mode=st.sampled_from(["concepts", "word_pieces"]),
       probs=st.tuples(*[st.sampled_from([0.0, 0.5, 1.0])] * 3), seed=st.integers(0, 2**31))
def test_collated_batches_keep_their_invariants_and_run_through_the_model(pieces, tiny_model, items, tag_mode,
                                                                          probs, seed):
    collate = Collator(pieces, TAGS, 7, 30522, CollateSettings(tag_mode, masking=Masking(*probs)),
                       generator=torch.Generator().manual_seed(seed))
    b = collate(items)
    n = len(items)
    assert b["input_ids"].shape == b["word_mask"].shape == b["mlm_labels"].shape
    assert b["phrase_ids"].shape == b["phrase_mask"].shape == b["phrase_labels"].shape
    assert b["region_feats"].shape[:2] == b["region_mask"].shape and b["region_feats"].shape[0] == n
    assert b["region_mask"].sum(1).tolist() == [len(it["region_feats"]) for it in items]
    assert b["phrase_mask"].sum(1).tolist() == [len(it["phrases"]) for it in items]
    # labels only where something was there to mask; unmasked rows are ids of the shared table
    assert ((b["phrase_labels"] == IGNORE) | b["phrase_mask"]).all()
    assert ((b["tag_labels"] == IGNORE) | b["tag_mask"]).all()
    assert (b["phrase_ids"][b["phrase_mask"]] >= 103).all()
    model = tiny_model
    model.cfg.tag_mode = tag_mode  # the collator's mode decides only the tag input's shape here
    with torch.no_grad():
        t = model.encode_text(b["input_ids"], b["word_mask"], b["phrase_ids"], b["phrase_mask"])
        v = model.encode_image(b["tag_pieces"], b["tag_mask"], b["region_feats"], b["region_mask"])
        fused = model.fuse(t.hidden, t.mask, v.region_hidden, v.region_mask)
        itm = model.itm_logits(fused)
    assert torch.isfinite(t.global_emb).all() and torch.isfinite(v.global_emb).all() and torch.isfinite(itm).all()


@SETTINGS
@given(n=st.integers(0, 80), max_regions=st.integers(1, 50), max_tags=st.integers(0, 20))
def test_regions_beyond_the_maximum_are_cut_and_tags_are_the_most_confident(n, max_regions, max_tags):
    rng = np.random.default_rng(n)
    confs = rng.random(n).astype(np.float32)
    image = {"region_feats": rng.random((n, FEAT)).astype(np.float32), "boxes": rng.random((n, 4)) * 50,
             "confs": confs, "classes": [f"c{i}" for i in range(n)], "width": 64, "height": 64}
    it = image_item(image, max_regions, max_tags)
    assert it["region_feats"].shape == (min(n, max_regions), FEAT) and len(it["boxes"]) == min(n, max_regions)
    assert len(it["tags"]) == min(n, max_tags)
    kept = [confs[int(t[1:])] for t in it["tags"]]
    assert kept == sorted(kept, reverse=True)
    if kept and n > max_tags:
        assert min(kept) >= np.sort(confs)[::-1][len(kept) - 1]


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(key=st.text(max_size=20), value=st.text(max_size=20))
def test_config_overrides_are_applied_or_rejected_by_name(key, value):
    assume("\x00" not in key + value)
    try:
        load_config("tiny", [f"{key}={value}"])
    except ConfigError as err:
        assert str(err)


@pytest.fixture(scope="module")
def training_model():
    torch.manual_seed(0)
    return MVPTR(load_config("tiny").model, 7, torch.tensor([[4418, 0], [2675, 0], [4026, 2422], [14175, 6277]]))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=batches(), seed=st.integers(0, 2**31))
@example(items=[item([101, 102], 0, [], []), {**item([101, 2417, 102], 0, ["circle"], [1]), "image_index": 1}],
         seed=0)  # no image of the batch has a region
def test_every_objective_gives_a_finite_loss_on_any_batch(pieces, training_model, items, seed):
    """Images without regions, captions without phrases, a batch of one: losses stay finite."""
    from mvptr.train.recipes import OBJECTIVES, pretraining_losses

    cfg, model = load_config("tiny"), training_model
    model.zero_grad(set_to_none=True)
    b = Collator(pieces, TAGS, 7, 30522, CollateSettings(masking=Masking(0.5, 0.5, 0.5)),
                 generator=torch.Generator().manual_seed(seed))(
        items)
    losses = pretraining_losses(model, b, list(OBJECTIVES), cfg.objectives, torch.Generator().manual_seed(seed))
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values())
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
