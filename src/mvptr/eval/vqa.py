"""VQA accuracy as the official evaluation computes it (answers normalised as in
``data/answers.py``).

A prediction's accuracy on one question is min(1, #matching humans / 3), averaged over
the ten subsets of nine of the ten human answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..core.errors import FormatError
from ..data.answers import clean, normalize_answer


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official accuracy (0..1) of one predicted answer against the human answers: for each
    human, min(1, matches among the others / 3), summed in order and divided by their number,
    as the official code does (so that rounded means agree to the last digit)."""
    if not answers:
        raise FormatError("no human answers to score a prediction against")
    humans = [clean(a) for a in answers]
    pred = clean(prediction)
    if len(set(humans)) > 1:
        humans = [normalize_answer(a) for a in humans]
        pred = normalize_answer(pred)
    matches = sum(h == pred for h in humans)
    return sum(min(1, (matches - (h == pred)) / 3) for h in humans) / len(humans)


def evaluate_vqa(predictions: Mapping[int, str], questions: Iterable) -> dict:
    """Overall and per-answer-type accuracy (percent) of predictions {question_id: answer} on
    annotated questions (``question_id``, ``answers``, ``answer_type``, as ``read_vqa`` gives);
    a question without a prediction counts as wrong. No question, or a question without human
    answers, is an error: there is nothing to measure."""
    scores: dict[str, list[float]] = {}
    for q in questions:
        if not q.answers:
            raise FormatError(f"question {q.question_id}: no human answers to score against")
        acc = vqa_accuracy(predictions.get(q.question_id, ""), q.answers)
        scores.setdefault("overall", []).append(acc)
        scores.setdefault(q.answer_type or "other", []).append(acc)
    if not scores:
        raise FormatError("no annotated questions to evaluate")
    out = {k: round(100 * sum(v) / len(v), 2) for k, v in scores.items()}
    out["questions"] = len(scores["overall"])
    return out
