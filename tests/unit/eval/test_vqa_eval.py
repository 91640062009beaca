"""VQA accuracy and answer normalisation against naive references; VQA v2 / SNLI-VE files."""

import itertools
import json

import numpy as np
import pytest

from mvptr.core.errors import FormatError
from mvptr.data.answers import CONTRACTIONS, answer_vocabulary, normalize_answer, soft_scores, vqa_accuracy_from_count
from mvptr.eval.vqa import evaluate_vqa, vqa_accuracy
from mvptr.formats.snli_ve import VEPair, read_snli_ve, write_snli_ve
from mvptr.formats.vqa import VQAQuestion, read_vqa, write_vqa_annotations, write_vqa_questions, write_vqa_results


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("none", "0"), ("ten dogs", "10 dogs"),
    ("the dog.", "dog"), ("a red circle?", "red circle"), ("An apple", "apple"),
    ("dont", "don't"), ("isnt it", "isn't it"), ("couldnt've", "couldn't've"),
    ("yes!", "yes"), ("1,000", "1000"), ("2.5", "2.5"), ("left-hand", "left hand"), ("red , blue", "red blue"),
    ("  Yes\n", "yes"),
])
def test_normalisation_follows_the_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


def _humans(answer, k, other="zebra"):
    return [answer] * k + [other] * (10 - k)


# (prediction, ten human answers, accuracy by the official evaluation's rules); each value
# was also checked against the official vqaEval.py run on the same answers
TRICKY = [
    ("yes!", _humans("yes", 9, "no"), 1.0),  # humans disagree: punctuation goes
    ("yes!", ["yes"] * 10, 0.0),  # humans agree: compared as written
    ("Yes", ["yes"] * 10, 0.0),
    ("yes\n", ["yes"] * 10, 1.0),  # line breaks and tabs always become spaces, then strip
    ("\tyes ", _humans("yes", 4, "no"), 1.0),
    ("two", _humans("2", 3), 0.9),  # number words
    ("Two", ["2"] * 10, 0.0),
    ("none", _humans("0", 2), 0.6),
    ("ten dogs", _humans("10 dogs", 1), 0.3),
    ("one way", _humans("1 way", 4), 1.0),
    ("the dog", _humans("dog", 1), 0.3),  # articles
    ("an apple", _humans("Apple", 2), 0.6),
    ("a", _humans("the", 3), 0.9),  # both become empty
    ("dont", _humans("don't", 4), 1.0),  # contractions, from the official table only
    ("im", _humans("I'm", 5), 0.0),  # its upper-case key "Im" never matches
    ("lets", _humans("let's", 3), 0.0),  # not in the table
    ("shes", _humans("she's", 3), 0.0),
    ("couldntve", _humans("couldn't've", 3), 0.0),
    ("couldnt've", _humans("couldn't've", 3), 0.9),
    ("'ows'at", _humans("'ow's'at", 3), 0.9),
    ("somebody'd", _humans("somebodyd", 2), 0.6),  # the table maps it backwards
    ("dog's", _humans("dogs", 5), 0.0),  # an apostrophe is not punctuation
    ("1,000", _humans("1000", 3), 0.9),
    ("2.5", _humans("2.5", 3), 0.9),
    ("2.", _humans("2", 3), 0.9),
    ("dog.", _humans("dog", 3), 0.9),
    ("yes" + "." * 32, _humans("yes", 4, "no"), 1.0),  # at most 32 periods are stripped
    ("yes" + "." * 33, _humans("yes", 4, "no"), 0.0),
    ("red,blue", _humans("red blue", 3), 0.9),
    ("red, blue", _humans("red blue", 3), 0.9),
    ("black/white", _humans("black white", 2), 0.6),
    ("black / white", _humans("black white", 2), 0.6),
    ("left-hand", _humans("left hand", 1), 0.3),
    ("3:00", _humans("300", 3), 0.0),  # ':' is not in the official list
    ("what?", _humans("what", 3), 0.9),
    ("", _humans("yes", 5), 0.0),
] + [("cat", _humans("cat", k, "dog"), min(1.0, 0.3 * k)) for k in range(11)]  # 0 to 10 humans agree


@pytest.mark.parametrize("prediction, answers, official", TRICKY)
def test_accuracy_on_tricky_answers_is_the_official_value(prediction, answers, official):
    assert vqa_accuracy(prediction, answers) == pytest.approx(official, abs=1e-12)


def test_the_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd" and CONTRACTIONS["let's"] == "let's"
    assert CONTRACTIONS["Im"] == "I'm" and "lets" not in CONTRACTIONS and "yallll" not in CONTRACTIONS


def test_nothing_to_score_is_an_error():
    with pytest.raises(ValueError, match="no annotated questions"):
        evaluate_vqa({1: "yes"}, [])
    with pytest.raises(ValueError, match="question 7: no human answers"):
        evaluate_vqa({7: "yes"}, [VQAQuestion(7, "1", "what is it?")])


def naive_accuracy(prediction, answers):
    """The official procedure, step by step: normalise only when humans disagree, then average
    min(1, matches / 3) over every choice of nine of the ten humans."""
    answers = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    prediction = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(answers)) > 1:
        answers = [normalize_answer(a) for a in answers]
        prediction = normalize_answer(prediction)
    accs = [min(1.0, sum(answers[i] == prediction for i in subset) / 3)
            for subset in itertools.combinations(range(len(answers)), len(answers) - 1)]
    return sum(accs) / len(accs)


def test_accuracy_matches_the_naive_ten_choose_nine_average_on_random_answer_sets():
    rng = np.random.default_rng(0)
    pool = ["2", "two", "Two.", "yes", "no", "red", "the red", "dog", "dogs"]
    for _ in range(300):
        answers = list(rng.choice(pool, size=10))
        pred = str(rng.choice(pool))
        assert vqa_accuracy(pred, answers) == pytest.approx(naive_accuracy(pred, answers))
    for count in range(11):
        answers = ["a"] * count + ["b"] * (10 - count)
        assert vqa_accuracy_from_count(count) == pytest.approx(naive_accuracy("a", answers))


def test_answers_are_normalised_only_when_the_humans_disagree():
    assert vqa_accuracy("two", ["2"] * 10) == 0.0  # all agree: compared as written
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("2", ["two"] * 2 + ["3"] * 8) == pytest.approx(0.6)


def test_soft_scores_are_each_answers_accuracy():
    answers = ["2", "2", "two", "3", "3", "3", "3", "3", "4", "cat"]
    index = {"2": 0, "3": 1, "4": 2, "5": 3}
    scores = soft_scores(answers, index)
    assert set(scores) == {0, 1, 2}
    for answer, i in index.items():
        assert scores.get(i, 0.0) == pytest.approx(naive_accuracy(answer, answers))
    assert [vqa_accuracy_from_count(c) for c in range(5)] == pytest.approx([0, 0.3, 0.6, 0.9, 1.0])


def test_answer_vocabulary_is_the_most_frequent_normalised_answers():
    lists = [["Two", "2", "yes"], ["yes", "yes", "no"], ["a dog", "dog", "no"], ["cat"]]
    assert answer_vocabulary(lists, 3) == ["yes", "2", "dog"]
    assert answer_vocabulary(lists, 100) == ["yes", "2", "dog", "no", "cat"]


def _rows():
    return [
        {"question_id": 10, "image_id": 1, "question": "how many shapes are there?", "answers": ["2"] * 7 + ["two"] * 3,
         "multiple_choice_answer": "2", "answer_type": "number", "question_type": "how many"},
        {"question_id": 11, "image_id": 1, "question": "is there a red circle?", "answers": ["yes"] * 10,
         "multiple_choice_answer": "yes", "answer_type": "yes/no", "question_type": "is there a"},
        {"question_id": 20, "image_id": 2, "question": "what color is the star?", "answers": ["red"] * 2 + ["blue"] * 8,
         "multiple_choice_answer": "blue", "answer_type": "other", "question_type": "what color is the"},
    ]


def test_vqa_files_round_trip_in_the_official_layout(tmp_path):
    q_path, a_path = tmp_path / "q.json", tmp_path / "a.json"
    write_vqa_questions(q_path, _rows(), "train2014")
    write_vqa_annotations(a_path, _rows(), "train2014")
    raw = json.loads(a_path.read_text())["annotations"][0]
    assert set(raw) == {"question_id", "image_id", "answers", "multiple_choice_answer", "answer_type", "question_type"}
    assert raw["answers"][0] == {"answer": "2", "answer_confidence": "yes", "answer_id": 1}
    assert set(json.loads(q_path.read_text())["questions"][0]) == {"image_id", "question", "question_id"}
    questions = read_vqa(q_path, a_path)
    assert [q.question_id for q in questions] == [10, 11, 20]
    assert questions[0].image_id == "1" and questions[0].answers[-1] == "two"
    assert read_vqa(q_path)[2].answers == []
    (tmp_path / "bad.json").write_text(json.dumps({"questions": [{"question": "x"}]}))
    with pytest.raises(FormatError, match="question 0"):
        read_vqa(tmp_path / "bad.json")

    predictions = {10: "two", 11: "no", 20: "red"}
    result = evaluate_vqa(predictions, questions)
    naive = [naive_accuracy(predictions[q.question_id], q.answers) for q in questions]
    assert result["overall"] == pytest.approx(round(100 * sum(naive) / 3, 2))
    assert result["number"] == 100.0 and result["yes/no"] == 0.0 and result["other"] == pytest.approx(60.0)
    write_vqa_results(tmp_path / "results.json", predictions)
    assert json.loads((tmp_path / "results.json").read_text())[0] == {"question_id": 10, "answer": "two"}


def test_snli_ve_files_round_trip(tmp_path):
    pairs = [VEPair("1000092795", "Two men are outside.", "entailment", "Two young guys ...", "1000092795.jpg#0r1e"),
             VEPair("1000092795", "Two men are asleep.", "contradiction")]
    path = tmp_path / "snli_ve_dev.jsonl"
    write_snli_ve(path, pairs)
    row = json.loads(path.read_text().splitlines()[0])
    assert {"Flickr30K_ID", "sentence1", "sentence2", "gold_label", "pairID"} <= set(row)
    assert read_snli_ve(path) == pairs
    path.write_text('{"Flickr30K_ID": "1", "sentence2": "x", "gold_label": "maybe"}\n')
    with pytest.raises(FormatError, match=":1: gold_label"):
        read_snli_ve(path)
