"""Visual question answering (paper A.3.2): an answer classifier on the multimodal summary,
initialised from the MLM head, trained with BCE on soft scores; evaluated with the official
VQA accuracy, and a results file for the evaluation server. easy-VQA is the same task on
other files (the demo's)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core import distributed
from ..core.config import GPUS, TaskConfig, task_config
from ..core.errors import FormatError
from ..data.answers import answer_vocabulary
from ..data.tasks import VQADataset
from ..eval.vqa import evaluate_vqa
from ..formats.vqa import read_vqa, write_vqa_results
from ..model.losses import vqa_loss
from ..model.task_models import MVPTRForVQA
from ..text.tokenizer import pad_lists
from .base import COMMON_FIELDS, Task, TaskRun, predict, task_collator, task_images, word_pieces


def vqa_questions(t: TaskConfig, split: str, training: bool = False) -> list:
    """The questions of ``split`` ("train2014+val2014" joins several) with their annotations.

    Training needs the answers: an annotations file that is not set or not there is an error.
    An evaluation split without one (test-dev) gives questions without answers (a results file
    for the evaluation server, no accuracy), and says so on stderr."""
    out = []
    for part in split.split("+"):
        questions = t.questions.format(split=part)
        ann = t.annotations.format(split=part) if t.annotations else None
        if ann is None or not Path(ann).exists():
            what = f"annotations file {ann}: file not found" if ann else "no annotations file (annotations unset)"
            if training:
                raise FormatError(f"{what}; training needs the answers of {questions} (finetune.<task>.annotations)",
                                  "file not found")
            if distributed.active().main:
                print(f"mvptr: {questions}: {what}; writing its results file without accuracy", file=sys.stderr)
            ann = None
        out += read_vqa(questions, ann)
    return out


class VQA(Task):
    name = "vqa"
    loss_name = "vqa"  # the logged loss (easy-VQA logs it under the same name)
    reads = (*COMMON_FIELDS, "questions", "annotations", "features", "predictions", "num_answers", "mask_regions")
    needs_head = True

    def defaults(self) -> TaskConfig:
        # A.3.2: 25 epochs ("converges in around 7"), 32 per GPU, dropout 0.3, 50 / 128 / 30 (no phrases here)
        return task_config("vqa", 25, 5e-5, 32 * GPUS, max_regions=50, max_tokens=128, max_tags=30, dropout=0.3,
                           questions="data/demo/vqa/v2_OpenEnded_demo_{split}_questions.json",
                           annotations="data/demo/vqa/v2_demo_{split}_annotations.json")

    def train_data(self, run: TaskRun):
        t = run.t
        questions = vqa_questions(t, t.train_split, training=True)
        answers = answer_vocabulary((q.answers for q in questions), t.num_answers)
        info = {"answers": answers}
        self.attach_head(run.bundle, info)
        dataset = VQADataset(questions, task_images(run.cfg, t), word_pieces(run), answers, t.max_train, run.skip)
        return dataset, task_collator(run, len(answers), t.mask_regions), info

    def attach_head(self, bundle, info: dict, init: bool = True) -> None:
        """The answer rows initialised from the MLM head (each the mean of its answer's word pieces)."""
        answers = info["answers"]
        new = MVPTRForVQA.from_base(bundle.model, answers=answers)
        if init:
            tok = bundle.tokenizer
            pieces = [tok(a, add_special_tokens=False)["input_ids"] or [tok.unk_token_id] for a in answers]
            new.task_head.init_from_mlm(new.mlm_head, new.word_rows.detach(), pad_lists(pieces, 0))
        bundle.model = new

    def loss(self, model, batch, generator):
        _, fused = model.fuse_batch(batch)
        return {self.loss_name: vqa_loss(model.task_logits(fused), batch["answer_targets"])}

    def evaluate(self, run: TaskRun) -> dict:
        t, split = run.t, run.t.eval_split
        answers = run.bundle.model.task_head.answers
        dataset = VQADataset(vqa_questions(t, split), task_images(run.cfg, t), word_pieces(run), answers, t.max_eval,
                             run.skip)
        collate = task_collator(run, len(answers), run.mask_regions)
        best = predict(run, dataset, collate, len(answers)).argmax(1).tolist()
        predictions = {q.question_id: answers[a] for q, a in zip(dataset.questions, best)}
        if run.out_dir is not None and distributed.active().main:
            write_vqa_results(run.out_dir / f"vqa_results_{split}.json", predictions)
        if not dataset.questions or not dataset.questions[0].answers:
            return {"questions": len(predictions), "results_only": True}
        metrics = evaluate_vqa(predictions, dataset.questions)
        majority = evaluate_vqa({q.question_id: answers[0] for q in dataset.questions}, dataset.questions)
        return {"acc": metrics.pop("overall"), "majority": majority["overall"], **metrics}

    def report_rows(self, report: dict) -> list:
        if self.name not in report:
            return []
        vqa = report[self.name]
        return [("VQA (demo world)", "VQA accuracy", vqa["acc"], f"majority answer {vqa['majority']:.2f}")]


class EasyVQA(VQA):
    """easy-VQA (the demo's converted ``easy_vqa`` data): VQA on its own images and files."""

    name = "easyvqa"

    def defaults(self) -> TaskConfig:
        return task_config("easyvqa", 7, 5e-5, 32,
                           questions="data/demo/easyvqa/v2_OpenEnded_easyvqa_{split}_questions.json",
                           annotations="data/demo/easyvqa/v2_easyvqa_{split}_annotations.json",
                           features="data/demo/easyvqa/features.tsv", predictions="data/demo/easyvqa/predictions.tsv")

    def report_rows(self, report: dict) -> list:
        if self.name not in report:
            return []
        easy = report[self.name]
        return [("easy-VQA (test)", "VQA accuracy", easy["acc"],
                 f"majority answer {easy['majority']:.2f}, question only {easy['question_only']:.2f}")]
