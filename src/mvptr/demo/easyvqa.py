"""easy-VQA (the ``easy-vqa`` package: 64x64 images of one shape, 4,000 train and 1,000
test, with generated questions) as VQA v2 files with regions from the demo detector.

Writes into ``out_dir``: ``v2_OpenEnded_easyvqa_{train,test}_questions.json``,
``v2_easyvqa_{train,test}_annotations.json`` (the one answer given by all ten "humans"),
and ``features.tsv`` / ``predictions.tsv`` (VinVL layout). Train image ``k`` keeps id
``k``; test image ``k`` becomes ``TEST_OFFSET + k``, so that the two splits share one
feature file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.extras import needs
from ..formats.vinvl import write_vinvl_features, write_vinvl_predictions
from ..formats.vqa import write_vqa_annotations, write_vqa_questions
from ..vision.demo_detector import DemoDetector

TEST_OFFSET = 100_000
SPLITS = ("train", "test")


def easyvqa_paths(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    return out / f"v2_OpenEnded_easyvqa_{split}_questions.json", out / f"v2_easyvqa_{split}_annotations.json"


def easy_vqa_package():
    """The easy_vqa package (mvptr[demo])."""
    with needs("demo"):
        import easy_vqa
    return easy_vqa


def _split_data(split: str):
    easy_vqa = easy_vqa_package()
    questions, answers, image_ids = (easy_vqa.get_train_questions() if split == "train"
                                     else easy_vqa.get_test_questions())
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    return questions, answers, image_ids, paths


def prepare_easyvqa(out_dir: str | Path, detector_path: str | Path, max_images: int = 0,
                    progress: bool = False) -> dict:
    """Convert easy-VQA (optionally only its first ``max_images`` images per split); returns counts."""
    t0 = time.perf_counter()
    easy_vqa_package()  # a missing extra says so before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = DemoDetector.load(detector_path)
    feature_rows, prediction_rows, counts = [], [], {}
    for split in SPLITS:
        questions, answers, image_ids, paths = _split_data(split)
        offset = TEST_OFFSET if split == "test" else 0
        keep = sorted(paths)[:max_images] if max_images else sorted(paths)
        pixels = [np.asarray(Image.open(paths[k]).convert("RGB")) for k in keep]
        for k, regions in zip(keep, detector.detect(pixels, progress=progress)):
            feature_rows.append((str(offset + k), regions.features))
            prediction_rows.append((str(offset + k), regions.prediction()))
        kept = set(keep)
        rows = []
        for n, (q, a, k) in enumerate(zip(questions, answers, image_ids)):
            if k not in kept:
                continue
            rows.append({"question_id": offset + n, "image_id": offset + k, "question": q, "answers": [a] * 10,
                         "multiple_choice_answer": a, "answer_type": "yes/no" if a in ("yes", "no") else "other",
                         "question_type": " ".join(q.split()[:2])})
        q_path, a_path = easyvqa_paths(out, split)
        write_vqa_questions(q_path, rows, data_subtype=f"easyvqa_{split}", data_type="easyvqa")
        write_vqa_annotations(a_path, rows, data_subtype=f"easyvqa_{split}", data_type="easyvqa")
        counts[split] = {"images": len(keep), "questions": len(rows)}
    write_vinvl_features(out / "features.tsv", feature_rows)
    write_vinvl_predictions(out / "predictions.tsv", prediction_rows)
    summary = {"splits": counts, "regions": int(sum(len(f) for _, f in feature_rows)),
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "easyvqa.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
