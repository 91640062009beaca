"""Image-text retrieval (paper 4.2.1, A.3.1): VSC + ITM on the caption pairs (the pre-training
objectives, nothing masked), evaluated by coarse-to-fine ranking (``eval/retrieval.py``) with
the per-pair scores saved. The merged-attention model has no global embeddings: ITM alone,
with uniformly drawn negatives, and every pair of the evaluation images scored by ITM."""

from __future__ import annotations

import numpy as np

from ..core import distributed
from ..core.config import GPUS, Config, TaskConfig, task_config
from ..data.builders import collator
from ..data.pretrain import build_pair_dataset
from ..eval.retrieval import rank_dataset
from ..train.objectives import OBJECTIVES
from ..train.recipes import Recipe, pretraining_recipe
from .base import COMMON_FIELDS, Task, TaskRun, word_pieces


class Retrieval(Task):
    name = "retrieval"
    reads = (*COMMON_FIELDS, "max_phrases")
    uses_objectives = True

    def defaults(self) -> TaskConfig:
        # A.3.1, Flickr30k (COCO: 15 epochs): 96 per GPU, regions / tokens / tags / phrases 50 / 50 / 30 / 5
        return task_config("retrieval", 5, 4e-5, 96 * GPUS, objectives=["vsc", "itm"],
                           max_regions=50, max_tokens=50, max_tags=30, max_phrases=5, dropout=0.1)

    def train_data(self, run: TaskRun):
        cfg, t = run.cfg, run.t
        dataset = build_pair_dataset(cfg.data, word_pieces(run), run.bundle.phrase_vocab, cfg.model.region_feat_dim,
                                     t.train_split, t.max_train, skip=run.skip)
        return dataset, collator(cfg, run.bundle), {}

    def recipe(self, cfg: Config, t: TaskConfig, merged: bool = False) -> Recipe:
        # VSC + ITM by default (paper 4.2.1); the merged model trains those its passes have (no VSC)
        objectives = [o for o in t.train.objectives if not merged or getattr(OBJECTIVES.get(o), "merged", True)]
        return pretraining_recipe(self.name, objectives, cfg.objectives, merged,
                                  negative_warmup_steps=t.train.negative_warmup_steps,
                                  loss_weights=t.train.loss_weights)

    def evaluate(self, run: TaskRun) -> dict:
        """Ranking on ``t.eval_split`` (its first ``t.max_eval`` images, or all) with ``cfg.eval``'s
        k_c, k_i and final score."""
        cfg, t, bundle = run.cfg, run.t, run.bundle
        dataset = build_pair_dataset(cfg.data, word_pieces(run), bundle.phrase_vocab, cfg.model.region_feat_dim,
                                     t.eval_split, t.max_eval, skip=run.skip)
        result, image_ids = rank_dataset(cfg, bundle.model, dataset, collator(cfg, bundle), run.progress,
                                         keep_pairs=True, subset=("finetune.retrieval.max_eval", t.max_eval))
        pairs = result.pop("pair_scores", None)
        if run.out_dir is not None and pairs is not None and distributed.active().main:
            _save_pair_scores(run.out_dir, dataset.records, image_ids, pairs)
        return {**result, "images": len(image_ids), "captions": len(dataset)}

    def report_rows(self, report: dict) -> list:
        if "retrieval_finetuned" not in report:
            return []
        rt, zero = report["retrieval_finetuned"], report["retrieval"]["pretrained"]
        return [
            ("retrieval (test)", "RSUM, re-ranked", rt["rerank"]["rsum"], f"zero-shot {zero['rerank']['rsum']:.2f}"),
            ("retrieval (test)", "RSUM, uni-modal", rt["uni"]["rsum"], f"zero-shot {zero['uni']['rsum']:.2f}"),
            ("retrieval (test)", "i2t / t2i R@1, re-ranked",
             f"{rt['rerank']['i2t_r1']:.2f} / {rt['rerank']['t2i_r1']:.2f}",
             f"zero-shot {zero['rerank']['i2t_r1']:.2f} / {zero['rerank']['t2i_r1']:.2f}"),
        ]


def _save_pair_scores(out_dir, records, image_ids, pairs) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "retrieval_pair_scores.npz",
        image_id=np.asarray([image_ids[i] for i in pairs["image"].tolist()]),
        text_index=pairs["text"].numpy(),
        caption=np.asarray([records[i].caption for i in pairs["text"].tolist()]),
        positive=np.asarray([records[t].image_id == image_ids[v]
                             for v, t in zip(pairs["image"].tolist(), pairs["text"].tolist())]),
        itm=pairs["itm"].numpy(),
        **({"sim": pairs["sim"].numpy()} if "sim" in pairs else {}),  # the merged model has none
    )
