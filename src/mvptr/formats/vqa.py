"""VQA v2: the official question and annotation JSON files, and the results file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..core.errors import FormatError
from ..core.fileio import PathLike, load_json, write_json


@dataclass
class VQAQuestion:
    """One VQA v2 question; ``answers`` etc. are empty without an annotation file."""

    question_id: int
    image_id: str
    question: str
    answers: list[str] = field(default_factory=list)
    multiple_choice_answer: str = ""
    answer_type: str = ""
    question_type: str = ""
    source: str = field(default="", compare=False, repr=False)  # the questions file


def write_vqa_questions(path: PathLike, questions: Sequence[Mapping[str, Any]], data_subtype: str,
                        data_type: str = "mscoco") -> None:
    """The official questions file: ``{"questions": [{"image_id", "question", "question_id"}]}``."""
    rows = [{"image_id": q["image_id"], "question": q["question"], "question_id": q["question_id"]}
            for q in questions]
    write_json(path, {"info": {}, "task_type": "Open-Ended", "data_type": data_type,
                      "license": {}, "data_subtype": data_subtype, "questions": rows}, indent=None)


def write_vqa_annotations(path: PathLike, annotations: Sequence[Mapping[str, Any]], data_subtype: str,
                          data_type: str = "mscoco") -> None:
    """The official annotations file. Each record: ``question_id``, ``image_id``, ``answers``
    (a list of answer strings, written as ``{"answer", "answer_confidence", "answer_id"}``),
    ``multiple_choice_answer``, ``answer_type``, ``question_type``."""
    rows = []
    for a in annotations:
        answers = [{"answer": ans, "answer_confidence": "yes", "answer_id": k + 1}
                   for k, ans in enumerate(a["answers"])]
        rows.append({"question_id": a["question_id"], "image_id": a["image_id"], "answers": answers,
                     "multiple_choice_answer": a["multiple_choice_answer"], "answer_type": a["answer_type"],
                     "question_type": a["question_type"]})
    write_json(path, {"info": {}, "license": {}, "data_type": data_type, "data_subtype": data_subtype,
                      "annotations": rows}, indent=None)


def read_vqa(questions_path: PathLike, annotations_path: PathLike | None = None) -> list[VQAQuestion]:
    """Questions (and their annotations, when given) of the official VQA v2 JSON files."""
    data = load_json(questions_path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise FormatError(f"{questions_path}: expected a JSON object with a 'questions' list", "bad VQA file")
    out = []
    for k, q in enumerate(data["questions"]):
        if not isinstance(q, dict) or not all(key in q for key in ("image_id", "question", "question_id")):
            raise FormatError(f"{questions_path} (question {k}): expected image_id, question and question_id",
                              "bad VQA file")
        try:
            out.append(VQAQuestion(int(q["question_id"]), str(q["image_id"]), str(q["question"]),
                                   source=str(questions_path)))
        except (TypeError, ValueError):
            raise FormatError(f"{questions_path} (question {k}): expected an integer question_id, "
                              f"got {q['question_id']!r}", "bad VQA file") from None
    if annotations_path is None:
        return out
    ann = load_json(annotations_path)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise FormatError(f"{annotations_path}: expected a JSON object with an 'annotations' list", "bad VQA file")
    by_id = {}
    for k, a in enumerate(ann["annotations"]):
        try:
            by_id[int(a["question_id"])] = (a, [str(x["answer"]) for x in a["answers"]])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{annotations_path} (annotation {k}): expected question_id and answers "
                              "[{answer, ...}]", "bad VQA file") from None
    for q in out:
        if q.question_id not in by_id:
            raise FormatError(f"{annotations_path}: no annotation for question {q.question_id}", "bad VQA file")
        a, answers = by_id[q.question_id]
        q.answers = answers
        q.multiple_choice_answer = str(a.get("multiple_choice_answer", ""))
        q.answer_type = str(a.get("answer_type", ""))
        q.question_type = str(a.get("question_type", ""))
    return out


def write_vqa_results(path: PathLike, answers: Mapping[int, str]) -> None:
    """The evaluation server's results file: ``[{"question_id", "answer"}]``."""
    write_json(path, [{"question_id": int(q), "answer": a} for q, a in answers.items()], indent=None)
