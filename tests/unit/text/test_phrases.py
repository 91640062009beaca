import json

import pytest

from helpers import parsed as parsed_caption
from mvptr.formats.captions import write_karpathy_json
from mvptr.formats.phrase_cache import read_phrase_cache, write_phrase_cache
from mvptr.text.phrases import (
    PhraseExtractor,
    PhraseVocab,
    phrase_string,
    prepare_phrases,
    statistics,
)


@pytest.fixture(scope="module")
def extractor():
    return PhraseExtractor()


def tuples_of(extractor, captions):
    return [p.tuples for p in extractor.extract(captions, progress=False)]


def words_of(extractor, caption):
    """Each tuple of a caption with the caption's text at each of its spans."""
    (p,) = extractor.extract([caption], progress=False)
    return {t: [caption[a:b] for a, b in spans] for t, spans in zip(p.tuples, p.spans)}


def test_spans_point_at_the_words_a_tuple_came_from(extractor):
    assert words_of(extractor, "older women watching big waves") == {
        ("woman", "old"): ["older", "women"],
        ("wave", "big"): ["big", "waves"],
        ("woman", "watching", "wave"): ["women", "watching", "waves"],
    }
    assert words_of(extractor, "two men with dogs") == {
        ("man", "two"): ["two", "men"],
        ("man", "with", "dog"): ["men", "with", "dogs"],
    }
    # compounds and multi-word relations; the spans of a tuple found twice are united
    assert words_of(extractor, "two tennis players on top of a table")[("tennis player", "on top of", "table")] == [
        "tennis", "players", "on", "top", "of", "table"]
    assert words_of(extractor, "a red ball and a red ball") == {("ball", "red"): ["red", "ball", "red", "ball"]}


def test_spans_refer_to_the_caption_as_given(extractor):
    caption = "  two men with dogs \n"  # extract strips it; the spans count its leading spaces
    assert words_of(extractor, caption) == {("man", "two"): ["two", "men"],
                                            ("man", "with", "dog"): ["men", "with", "dogs"]}


@pytest.mark.parametrize("caption, expected", [
    ("a big red circle above a small blue triangle",
     [("circle", "big"), ("circle", "red"), ("triangle", "small"), ("triangle", "blue"),
      ("circle", "above", "triangle")]),
    ("two green squares", [("square", "two"), ("square", "green")]),
    ("a woman standing next to a piano", [("woman", "next to", "piano")]),
    ("a cat on top of a table", [("cat", "on top of", "table")]),
    ("A smiling man with older dogs", [("man", "smiling"), ("dog", "old"), ("man", "with", "dog")]),
    ("The man and the woman are eating pizza.",
     [("man", "eating", "pizza"), ("woman", "eating", "pizza")]),
    ("", []),
])
def test_known_tuples(extractor, caption, expected):
    assert [p.tuples for p in extractor.extract([caption], progress=False)] == [expected]


def test_relation_keeps_surface_verb(extractor):
    (tuples,) = tuples_of(extractor, ["a man riding a big wave"])
    assert ("man", "riding", "wave") in tuples and ("wave", "big") in tuples
    assert not any(t[0] == "rid" or "a" in t for t in tuples)


def test_pronouns_dropped(extractor):
    for tuples in tuples_of(extractor, ["it is next to the dog", "He holds a red umbrella",
                                        "the woman who is wearing glasses"]):
        assert not {"it", "he", "who"} & {w for t in tuples for w in t}
    assert tuples_of(extractor, ["He holds a red umbrella"]) == [[("umbrella", "red")]]


def test_deduplicated(extractor):
    (tuples,) = tuples_of(extractor, ["a red ball and a red ball"])
    assert tuples == [("ball", "red")]


def test_phrase_string():
    assert phrase_string(("wave", "big")) == "big wave"
    assert phrase_string(("man", "riding", "wave")) == "man riding wave"
    with pytest.raises(ValueError):
        phrase_string(("a",))


def _lists():
    return [
        [("wave", "big"), ("man", "riding", "wave")],
        [("wave", "big"), ("wave", "big")],  # counts once for this caption
        [("wave", "big"), ("dog", "small")],
        [("dog", "small"), ("man", "riding", "wave")],
        [("cat", "black")],
    ]


def test_vocab_min_count_and_order(tmp_path):
    vocab = PhraseVocab.build(_lists(), min_count=2)
    assert [vocab.phrase(i) for i in range(len(vocab))] == [
        "big wave", "man riding wave", "small dog"]
    assert vocab.freq == {"big wave": 3, "man riding wave": 2, "small dog": 2}
    assert vocab.id(("wave", "big")) == 0 and vocab.id("small dog") == 2
    assert vocab.id(("cat", "black")) is None
    assert vocab.words(1) == ["man", "riding", "wave"]
    assert vocab.encode([("cat", "black"), ("dog", "small"), ("wave", "big"), ("dog", "small")],
                        max_phrases=5) == [2, 0]
    assert vocab.encode([("dog", "small"), ("wave", "big")], max_phrases=1) == [2]

    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    assert data == {"phrases": {"big wave": 0, "man riding wave": 1, "small dog": 2},
                    "freq": {"big wave": 3, "man riding wave": 2, "small dog": 2},
                    "min_count": 2}
    loaded = PhraseVocab.load(path)
    assert [loaded.phrase(i) for i in range(len(loaded))] == [
        vocab.phrase(i) for i in range(len(vocab))]
    assert loaded.freq == vocab.freq and loaded.min_count == 2


def test_statistics():
    lists = _lists()
    stats = statistics(lists, PhraseVocab.build(lists, min_count=2))
    assert stats["num_texts"] == 5
    assert stats["num_phrases"] == 8 and stats["num_unique_phrases"] == 4
    assert stats["vocab_size"] == 3
    assert stats["valid_phrases_per_text"] == pytest.approx(7 / 5)
    assert stats["most_frequent"][0] == ("big wave", 3)


def test_prepare_phrases_resumes(tmp_path, extractor, monkeypatch):
    captions = tmp_path / "captions.json"
    write_karpathy_json(captions, [
        {"filename": "1.jpg", "imgid": 0, "split": "train",
         "sentences": ["a man riding a big wave", "a big wave"]},
        {"filename": "2.jpg", "imgid": 1, "split": "train", "sentences": ["two green squares"]},
        {"filename": "3.jpg", "imgid": 2, "split": "test", "sentences": ["a big red circle"]},
    ])
    out = tmp_path / "phrases"
    out.mkdir()
    # An earlier, interrupted run already parsed the first caption.
    write_phrase_cache(out / "phrase_cache.jsonl",
                       [("a man riding a big wave", parsed_caption("a man riding a big wave",
                                                           [("wave", "big"), ("man", "riding", "wave")]))])
    parsed = []
    real_extract = extractor.extract

    def counting_extract(texts, **kwargs):
        parsed.extend(texts)
        return real_extract(texts, **kwargs)

    monkeypatch.setattr(extractor, "extract", counting_extract)
    stats = prepare_phrases(captions, out, min_count=2, extractor=extractor, chunk_size=2)

    assert parsed == ["a big wave", "two green squares", "a big red circle"]
    cache = read_phrase_cache(out / "phrase_cache.jsonl")
    assert set(cache) == {"a man riding a big wave", "a big wave", "two green squares", "a big red circle"}
    assert cache["a big red circle"].tuples == [("circle", "big"), ("circle", "red")]
    assert cache["a big red circle"].spans == [((2, 5), (10, 16)), ((6, 9), (10, 16))]
    # Only the train split builds the vocabulary: "big circle" (test) is not counted.
    vocab = PhraseVocab.load(out / "phrase_vocab.json")
    assert [vocab.phrase(i) for i in range(len(vocab))] == ["big wave"]
    assert stats["num_texts"] == 3 and stats["vocab_size"] == 1

    parsed.clear()
    prepare_phrases(captions, out, min_count=2, extractor=extractor)
    assert parsed == []

    # an edited caption is parsed anew, under its new text; one written twice is parsed once
    write_karpathy_json(captions, [
        {"filename": "1.jpg", "imgid": 0, "split": "train", "sentences": ["a man riding a big wave", "a big wave"]},
        {"filename": "2.jpg", "imgid": 1, "split": "train", "sentences": ["two red squares", "two red squares"]},
        {"filename": "3.jpg", "imgid": 2, "split": "test", "sentences": ["a big red circle"]},
    ])
    prepare_phrases(captions, out, min_count=2, extractor=extractor)
    assert parsed == ["two red squares"]
    assert read_phrase_cache(out / "phrase_cache.jsonl")["two red squares"].tuples == [("square", "two"),
                                                                                       ("square", "red")]
