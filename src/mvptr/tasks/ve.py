"""Visual entailment (SNLI-VE, paper A.3.3): a 3-way classifier on the multimodal summary, its
pooler initialised from the ITM head's, cross entropy; evaluated as accuracy, overall and per
gold label (and per group of hypotheses when the caller groups them)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import GPUS, TaskConfig, task_config
from ..data.tasks import VEDataset
from ..formats.snli_ve import VE_LABELS, read_snli_ve
from ..model.task_models import MVPTRForVE
from .base import (
    COMMON_FIELDS,
    Task,
    TaskRun,
    classification_accuracy,
    predict,
    task_collator,
    task_images,
    word_pieces,
)


class VisualEntailment(Task):
    name = "ve"
    reads = (*COMMON_FIELDS, "hypotheses", "features", "predictions", "mask_regions")
    needs_head = True

    def defaults(self) -> TaskConfig:
        # A.3.3: 64 per GPU, 70 / 70 / 20
        return task_config("ve", 5, 4e-5, 64 * GPUS, max_regions=70, max_tokens=70, max_tags=20, dropout=0.1,
                           hypotheses="data/demo/snli_ve/snli_ve_{split}.jsonl")

    def train_data(self, run: TaskRun):
        t = run.t
        self.attach_head(run.bundle, {})
        pairs = read_snli_ve(t.hypotheses.format(split=t.train_split), run.skip)
        info = {"unlabelled_pairs_left_out": pairs.unlabelled}  # gold label "-"
        dataset = VEDataset(pairs, task_images(run.cfg, t), word_pieces(run), t.max_train, run.skip)
        return dataset, task_collator(run, mask_regions=t.mask_regions), info

    def attach_head(self, bundle, info: dict, init: bool = True) -> None:
        new = MVPTRForVE.from_base(bundle.model, num_labels=len(VE_LABELS))
        if init:
            new.task_head.pooler.load_state_dict(new.itm_head.pooler.state_dict())
        bundle.model = new

    def loss(self, model, batch, generator):
        _, fused = model.fuse_batch(batch)
        return {"ve": F.cross_entropy(model.task_logits(fused).float(), batch["labels"])}

    def evaluate(self, run: TaskRun) -> dict:
        t = run.t
        pairs = read_snli_ve(t.hypotheses.format(split=t.eval_split), run.skip)
        dataset = VEDataset(pairs, task_images(run.cfg, t), word_pieces(run), t.max_eval, run.skip)
        collate = task_collator(run, mask_regions=run.mask_regions)
        pred = predict(run, dataset, collate, len(VE_LABELS)).argmax(1)
        gold = torch.tensor([VE_LABELS.index(p.label) for p in dataset.pairs])
        out = {**classification_accuracy(pred, gold, VE_LABELS), "pairs": len(gold),
               "unlabelled_pairs_left_out": pairs.unlabelled}
        if run.group_of is not None:
            groups = np.array([run.group_of(p.hypothesis) for p in dataset.pairs])
            out["per_group"] = {}
            for g in sorted(set(groups)):
                mine = torch.from_numpy(groups == g)
                out["per_group"][g] = {**classification_accuracy(pred[mine], gold[mine], VE_LABELS),
                                       "pairs": int(mine.sum())}
        return out

    def report_rows(self, report: dict) -> list:
        if self.name not in report:
            return []
        ve = report[self.name]
        return [
            ("SNLI-VE (demo world)", "accuracy", ve["acc"],
             "chance 33.33; per label " + ", ".join(f"{k} {v:.2f}" for k, v in ve.get("per_label", {}).items())),
            *[("SNLI-VE (demo world)", f"accuracy on {kind} hypotheses ({g['pairs']})", g["acc"],
               "per label " + ", ".join(f"{k} {v:.2f}" for k, v in g["per_label"].items()))
              for kind, g in ve.get("per_group", {}).items()],
        ]
