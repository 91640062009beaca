"""How often MLM could read a masked word through a phrase of the pass it reads.

Each caption of a COCO-style sample (``benchmarks/data/coco_style_captions.txt``, written for
this benchmark) is parsed into phrases, every phrase counting as known (the vocabulary is all
of them). Every word of the caption (a spaCy token that is not punctuation) is then masked,
one at a time, all of its word pieces, and the phrases the MLM pass would still read are
those the leak guard lets through. A masked word leaks when its spaCy lemma is a word of
such a phrase ("women" masked, "old woman" read); it leaks through the phrase alone when
no other word of the caption has that lemma either ("two dogs chasing dogs": masking one
"dogs", a phrase of the other tells nothing the other does not). Two guards:

* old: a phrase is hidden when one of its word pieces has the id of a masked piece (the
  guard before phrases kept the spans of their words; its logic lives here only);
* new: a phrase is hidden when one of the pieces it was parsed from is masked
  (``Collator``'s guard, fed the positions the pair dataset gives each phrase).

    python benchmarks/phrase_leak.py [--captions FILE]

prints the leaks over all masked words and over masked plural nouns (tag NNS), each
counted both ways (any: lemma in a phrase read; alone: and in no other word of the caption).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mvptr.data.collate import Collator
from mvptr.text.phrases import PhraseExtractor, PhraseVocab, phrase_pieces, phrase_string
from mvptr.text.tokenizer import WordPieces, load_tokenizer, piece_positions

HERE = Path(__file__).parent


def old_guard(vocab: PhraseVocab, pieces: WordPieces, ids: list[int], phrases: list[int],
              masked: set[int]) -> list[bool]:
    """The piece-id guard: phrase j leaks to nothing when one of its pieces is a masked piece."""
    table = phrase_pieces(vocab, pieces)
    masked_ids = {ids[n] for n in masked}
    return [bool(masked_ids & set(table[p])) for p in phrases]


def new_guard(collate: Collator, item: dict, masked: set[int]) -> list[bool]:
    words = torch.zeros(1, len(item["input_ids"]), dtype=torch.bool)
    words[0, sorted(masked)] = True
    return collate._leaking_phrases([item], words, len(item["phrases"]))[0].tolist()


def measure(captions: list[str]) -> dict:
    extractor = PhraseExtractor()
    parsed = extractor.extract(captions, progress=False)
    vocab = PhraseVocab({phrase_string(t): 1 for p in parsed for t in p.tuples}, 1)
    pieces = WordPieces(load_tokenizer(), 64)
    collate = Collator(pieces, [], len(vocab), 30522)
    ids_all, offsets_all = pieces.captions_with_offsets(captions)
    counts = {k: {"masked": 0, "old": 0, "new": 0, "old alone": 0, "new alone": 0}
              for k in ("words", "plural nouns")}
    for p, ids, offsets, doc in zip(parsed, ids_all, offsets_all, extractor.nlp.pipe(captions)):
        phrases, spans = vocab.encode_parsed(p)
        item = {"input_ids": ids, "phrases": phrases, "phrase_positions": piece_positions(offsets, spans)}
        for token in doc:
            if token.is_punct or token.is_space:
                continue
            (masked,) = piece_positions(offsets, [[(token.idx, token.idx + len(token.text))]])
            if not masked:  # cut off by max_tokens
                continue
            lemma = token.lemma_.lower()
            elsewhere = any(t.lemma_.lower() == lemma for t in doc if t.i != token.i and not t.is_punct)
            hidden = {"old": old_guard(vocab, pieces, ids, phrases, set(masked)),
                      "new": new_guard(collate, item, set(masked))}
            kinds = ["words"] + (["plural nouns"] if token.tag_ == "NNS" else [])
            for kind in kinds:
                counts[kind]["masked"] += 1
                for guard, flags in hidden.items():
                    shown = [vocab.words(i) for i, h in zip(phrases, flags) if not h]
                    leak = any(lemma in words for words in shown)
                    counts[kind][guard] += leak
                    counts[kind][f"{guard} alone"] += leak and not elsewhere
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", default=str(HERE / "data" / "coco_style_captions.txt"))
    args = ap.parse_args()
    captions = [line.strip() for line in Path(args.captions).read_text().splitlines() if line.strip()]
    counts = measure(captions)
    print(f"{len(captions)} captions, every word masked once")
    heads = ["old guard, any", "new guard, any", "old guard, alone", "new guard, alone"]
    print(f"{'masked':<14}{'count':>7}" + "".join(f"{h:>20}" for h in heads))
    for kind, c in counts.items():
        n = max(c["masked"], 1)
        cells = [f"{c[k]:>5} ({100 * c[k] / n:5.1f}%)" for k in ("old", "new", "old alone", "new alone")]
        print(f"{kind:<14}{c['masked']:>7}" + "".join(f"{x:>20}" for x in cells))


if __name__ == "__main__":
    main()
