"""Phrase grounding (Flickr30k Entities, paper A.3.4): the cosine of each mention (the mean of
its word pieces' multimodal outputs) to each region output, regressed on the regions' IoU with
the mention's box (MSE); evaluated as accuracy at IoU > 0.5."""

from __future__ import annotations

from ..core.config import GPUS, Config, TaskConfig, task_config
from ..core.errors import FormatError, SkippedSamples
from ..data.builders import collator, image_source, phrase_lookup
from ..data.grounding import grounding_examples
from ..data.pretrain import data_captions
from ..data.tasks import GroundingDataset
from ..eval.grounding import evaluate_grounding
from ..model.losses import grounding_loss, mention_outputs
from .base import COMMON_FIELDS, Task, TaskRun, task_collator


def grounding_dataset(cfg: Config, bundle, split: str, limit: int,
                      skip: SkippedSamples | None = None) -> GroundingDataset:
    image_ids = sorted({r.image_id for r in data_captions(cfg.data, [split], skip)})
    examples = grounding_examples(cfg.eval.entities_dir, image_ids, bundle.tokenizer, cfg.data.max_tokens,
                                  phrase_lookup(cfg, bundle.phrase_vocab, split), skip)
    if not examples:
        raise FormatError(f"{cfg.eval.entities_dir}: no Flickr30k Entities sentences for the {split!r} images "
                          "(expected Sentences/<image>.txt and Annotations/<image>.xml; eval.entities_dir)",
                          "file not found")
    return GroundingDataset(examples, image_source(cfg), limit)


class Grounding(Task):
    name = "grounding"
    reads = (*COMMON_FIELDS, "max_phrases")

    def defaults(self) -> TaskConfig:
        # A.3.4 gives no hyper-parameters for grounding: those of retrieval, 64 per GPU
        return task_config("grounding", 5, 4e-5, 64 * GPUS)

    def train_data(self, run: TaskRun):
        t = run.t
        dataset = grounding_dataset(run.cfg, run.bundle, t.train_split, t.max_train, run.skip)
        return dataset, task_collator(run, mask_regions=t.mask_regions), {}

    def loss(self, model, batch, generator):
        _, fused = model.fuse_batch(batch)
        phrase = mention_outputs(fused.hidden, batch["mention_weights"])
        return {"grounding": grounding_loss(phrase, fused.region_hidden, batch["region_mask"], batch["mention_iou"],
                                            batch["mention_mask"])}

    def evaluate(self, run: TaskRun) -> dict:
        cfg, t = run.cfg, run.t
        data = grounding_dataset(cfg, run.bundle, t.eval_split, t.max_eval, run.skip)
        return evaluate_grounding(run.bundle.model, data.examples, data.images, collator(cfg, run.bundle),
                                  cfg.eval.batch_size, cfg.device)

    def report_rows(self, report: dict) -> list:
        gr = report.get(self.name, {})
        if "finetuned" not in gr:
            return []
        return [("phrase grounding", "accuracy at IoU > 0.5", gr["finetuned"]["acc"],
                 f"zero-shot {gr['zero_shot']['acc']:.2f}, random region {gr['chance']['acc']:.2f}")]
