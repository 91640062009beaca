"""VQA answers: the official normalisation, the answer vocabulary and the soft training scores.

Answer normalisation follows the official VQA evaluation: line breaks and tabs become
spaces; then, only for questions whose ten human answers are not all the same string,
every answer and the prediction lose punctuation (kept inside numbers such as "1,000"
and "2.5"; at most 32 periods go, as the official call's misplaced flag allows), are
lower-cased, get number words mapped to digits ("two" -> "2", "none" -> "0"), lose the
articles a / an / the, and get apostrophes restored by the official contraction table
("dont" -> "don't").

An answer given by c of the ten humans scores min(1, c / 3) averaged over the ten subsets
of nine of them; as a soft training target that is 0.3, 0.6, 0.9 and 1.0 for 1, 2, 3 and
4+ matching humans, the values of the usual VQA fine-tuning.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, lookbehind typo included


# The official evaluation's contraction table, entry for entry and in its order ("key value"
# pairs). Its quirks are kept: the upper-case keys ("Im", "Ive", ...) never match the
# lower-cased words, "somebody'd" maps to "somebodyd", and "let's" / "she's" map to themselves.
_CONTRACTION_TABLE = """
aint ain't   arent aren't   cant can't   couldve could've   couldnt couldn't
couldn'tve couldn't've   couldnt've couldn't've   didnt didn't   doesnt doesn't   dont don't
hadnt hadn't   hadnt've hadn't've   hadn'tve hadn't've   hasnt hasn't   havent haven't   hed he'd
hed've he'd've   he'dve he'd've   hes he's   howd how'd   howll how'll   hows how's   Id've I'd've
I'dve I'd've   Im I'm   Ive I've   isnt isn't   itd it'd   itd've it'd've   it'dve it'd've
itll it'll   let's let's   maam ma'am   mightnt mightn't   mightnt've mightn't've
mightn'tve mightn't've   mightve might've   mustnt mustn't   mustve must've   neednt needn't
notve not've   oclock o'clock   oughtnt oughtn't   ow's'at 'ow's'at   'ows'at 'ow's'at
'ow'sat 'ow's'at   shant shan't   shed've she'd've   she'dve she'd've   she's she's
shouldve should've   shouldnt shouldn't   shouldnt've shouldn't've   shouldn'tve shouldn't've
somebody'd somebodyd   somebodyd've somebody'd've   somebody'dve somebody'd've
somebodyll somebody'll   somebodys somebody's   someoned someone'd   someoned've someone'd've
someone'dve someone'd've   someonell someone'll   someones someone's   somethingd something'd
somethingd've something'd've   something'dve something'd've   somethingll something'll
thats that's   thered there'd   thered've there'd've   there'dve there'd've   therere there're
theres there's   theyd they'd   theyd've they'd've   they'dve they'd've   theyll they'll
theyre they're   theyve they've   twas 'twas   wasnt wasn't   wed've we'd've   we'dve we'd've
weve we've   werent weren't   whatll what'll   whatre what're   whats what's   whatve what've
whens when's   whered where'd   wheres where's   whereve where've   whod who'd   whod've who'd've
who'dve who'd've   wholl who'll   whos who's   whove who've   whyll why'll   whyre why're
whys why's   wont won't   wouldve would've   wouldnt wouldn't   wouldnt've wouldn't've
wouldn'tve wouldn't've   yall y'all   yall'll y'all'll   y'allll y'all'll   yall'd've y'all'd've
y'alld've y'all'd've   y'all'dve y'all'd've   youd you'd   youd've you'd've   you'dve you'd've
youll you'll   youre you're   youve you've
"""
_PAIRS = _CONTRACTION_TABLE.split()
CONTRACTIONS = dict(zip(_PAIRS[::2], _PAIRS[1::2]))
# the official code passes re.UNICODE (= 32) where re.sub takes its count: at most 32 periods go
PERIODS_STRIPPED = 32


def strip_punctuation(text: str) -> str:
    out = text
    keep_together = _COMMA_IN_NUMBER.search(text) is not None
    for p in PUNCTUATION:
        if keep_together or f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_DECIMAL.sub("", out, count=PERIODS_STRIPPED)


def digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """The official normalisation of one answer (punctuation, digits, articles, contractions)."""
    return digits_and_articles(strip_punctuation(clean(text)))


def clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy_from_count(count) -> np.ndarray:
    """Accuracy of an answer given by ``count`` of the ten humans, averaged over the ten
    leave-one-out subsets: ``count`` of them lose a match, the other 10 - count keep all."""
    c = np.asarray(count, dtype=np.float64)
    return (c * np.minimum(1.0, (c - 1) / 3) + (10 - c) * np.minimum(1.0, c / 3)) / 10


def answer_vocabulary(answer_lists: Iterable[Sequence[str]], size: int) -> list[str]:
    """The ``size`` most frequent normalised human answers, most frequent first (ties:
    alphabetical); ``answer_lists`` holds each question's human answers."""
    counts: Counter = Counter()
    for answers in answer_lists:
        counts.update(normalize_answer(a) for a in answers)
    counts.pop("", None)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def soft_scores(answers: Sequence[str], vocab_index: Mapping[str, int]) -> dict[int, float]:
    """Training targets {answer index: score} of one question: each vocabulary answer's
    official accuracy, from how many humans gave it (after normalisation)."""
    counts = Counter(normalize_answer(a) for a in answers)
    scale = 10 / max(len(answers), 1)  # questions with other than ten humans: counts rescaled
    return {vocab_index[a]: float(vqa_accuracy_from_count(min(10.0, c * scale)))
            for a, c in counts.items() if a in vocab_index}
