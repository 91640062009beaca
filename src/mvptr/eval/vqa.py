"""VQA accuracy as the official evaluation computes it, the answer vocabulary and soft scores.

Answer normalisation follows the official VQA evaluation: line breaks and tabs become
spaces; then, only for questions whose ten human answers are not all the same string,
every answer and the prediction lose punctuation (kept inside numbers such as "1,000"
and "2.5"), are lower-cased, get number words mapped to digits ("two" -> "2", "none" ->
"0"), lose the articles a / an / the, and get apostrophes restored in contractions
("dont" -> "don't").

A prediction's accuracy on one question is min(1, #matching humans / 3), averaged over
the ten subsets of nine of the ten human answers. The same number, computed from each
candidate answer's count, is the soft training target (0.3, 0.6, 0.9 and 1.0 for 1, 2, 3
and 4+ matching humans, the values of the usual VQA fine-tuning).
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


_CONTRACTION_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's "
    "should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd there'd've "
    "there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll "
    "why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll "
    "you're you've"
)


def _contractions() -> dict[str, str]:
    """Spellings without (some) apostrophes -> the contraction, as in the official evaluation's
    table; its entries for "I'm", "I've" and "I'd've" have upper-case keys that never match
    the lower-cased words, so they are left out here."""
    forms = _CONTRACTION_FORMS.split()
    table = {f.replace("'", ""): f for f in forms}
    # half-written forms of the double contractions, and the few irregular entries
    for f in forms:
        if f.count("'") == 2:
            a, b, c = f.split("'")
            table[f"{a}{b}'{c}"] = f
            table[f"{a}'{b}{c}"] = f
    table.update({"yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've"})
    return table


CONTRACTIONS = _contractions()


def strip_punctuation(text: str) -> str:
    out = text
    keep_together = _COMMA_IN_NUMBER.search(text) is not None
    for p in PUNCTUATION:
        if keep_together or f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_DECIMAL.sub("", out)


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


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official accuracy (0..1) of one predicted answer against the human answers."""
    humans = [clean(a) for a in answers]
    pred = clean(prediction)
    if len(set(humans)) > 1:
        humans = [normalize_answer(a) for a in humans]
        pred = normalize_answer(pred)
    if len(humans) != 10:  # fewer or more humans: the same leave-one-out mean, done directly
        return float(np.mean([min(1.0, sum(h == pred for j, h in enumerate(humans) if j != i) / 3)
                              for i in range(len(humans))])) if humans else 0.0
    return float(vqa_accuracy_from_count(sum(h == pred for h in humans)))


def evaluate_vqa(predictions: Mapping[int, str], questions: Iterable) -> dict:
    """Overall and per-answer-type accuracy (percent) of predictions {question_id: answer} on
    annotated questions (``question_id``, ``answers``, ``answer_type``, as ``read_vqa`` gives);
    a question without a prediction counts as wrong."""
    scores: dict[str, list[float]] = {}
    for q in questions:
        acc = vqa_accuracy(predictions.get(q.question_id, ""), q.answers)
        scores.setdefault("overall", []).append(acc)
        scores.setdefault(q.answer_type or "other", []).append(acc)
    out = {k: round(100.0 * float(np.mean(v)), 2) for k, v in scores.items()}
    out["questions"] = len(scores.get("overall", []))
    return out


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
