"""Task datasets and collators for fine-tuning: VQA, SNLI-VE and phrase grounding.

(Retrieval fine-tunes on the pre-training pairs, see ``data/pretrain.py``.)

Every example is a text (word pieces, and phrase concepts where the text is a caption
with a parsed phrase cache) with the image's regions and tags, as in pre-training, plus
its target. Image ids of the task files (VQA's integer ``image_id``, SNLI-VE's
``Flickr30K_ID``) are matched to the feature store's ids as written, or else as integers,
so that "42" finds a store key "000042".
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..formats.snli_ve import VE_LABELS, VEPair
from ..formats.vqa import VQAQuestion
from ..text.tokenizer import WordPieces
from ..vision.regions import box_iou, ground_truth_box
from .answers import soft_scores
from .collate import Collator
from .pretrain import ImageSource


class TaskImages:
    """The regions of a task's images by the ids its files use."""

    def __init__(self, source: ImageSource):
        self.source = source
        self.by_number = {int(k): k for k in source.store.ids() if str(k).isdigit()}

    def key(self, image_id: str) -> str | None:
        if image_id in self.source:
            return image_id
        return self.by_number.get(int(image_id)) if str(image_id).isdigit() else None

    def __call__(self, image_id: str) -> dict:
        return self.source(self.key(image_id))


def _with_features(items: list, images: TaskImages, image_id, where, skip: SkippedSamples | None) -> list:
    """The items whose image has region features; any other is an error naming its file and entry
    (``where(item)``), or with ``skip`` left out and counted ("no features")."""
    store = images.source.store
    features = getattr(store, "path", None) or getattr(getattr(store, "features", None), "path", "the features")
    keep = []
    for it in items:
        if images.key(image_id(it)) is not None:
            keep.append(it)
        elif keep or skip is not None:
            skip_or_raise(skip, FormatError(f"{where(it)}: its image has no region features in {features} "
                                            f"(image: {image_id(it)})", "no features"))
    if not keep and items:
        raise FormatError(f"{features}: none of the {len(items)} {what_of(items)} has region features (first "
                          f"image: {image_id(items[0])}, {where(items[0])}); give the task the features of its images",
                          "no task images")
    return keep


def what_of(items: list) -> str:
    return "questions" if isinstance(items[0], VQAQuestion) else "hypotheses"


def _question_where(q: VQAQuestion) -> str:
    return f"{q.source or 'questions'} (question {q.question_id})"


def _pair_where(p: VEPair) -> str:
    return p.where or f"hypothesis {p.hypothesis!r}"


def _subsample(items: list, limit: int) -> list:
    """The first ``limit`` items in a fixed random order (all when 0), kept in file order."""
    if not limit or limit >= len(items):
        return items
    keep = np.sort(np.random.default_rng(0).permutation(len(items))[:limit])
    return [items[i] for i in keep]


class VQADataset(Dataset):
    """VQA v2 questions with soft answer targets over ``answers`` (when annotated)."""

    def __init__(self, questions: list[VQAQuestion], images: TaskImages, pieces: WordPieces,
                 answers: list[str], limit: int = 0, skip: SkippedSamples | None = None):
        self.questions = _subsample(_with_features(questions, images, lambda q: q.image_id, _question_where, skip),
                                    limit)
        self.images = images
        self.index = {a: i for i, a in enumerate(answers)}
        self.token_ids = pieces.captions([q.question for q in self.questions])

    def __len__(self) -> int:
        return len(self.questions)

    def describe(self, i: int) -> str:
        return f"image {self.questions[i].image_id}, question {self.questions[i].question_id}"

    def __getitem__(self, i: int) -> dict:
        q = self.questions[i]
        return {"input_ids": self.token_ids[i], "phrases": [], "targets": soft_scores(q.answers, self.index),
                **self.images(q.image_id)}


class VEDataset(Dataset):
    """SNLI-VE (image, hypothesis) pairs with their label index in ``VE_LABELS``."""

    def __init__(self, pairs: list[VEPair], images: TaskImages, pieces: WordPieces, limit: int = 0,
                 skip: SkippedSamples | None = None):
        self.pairs = _subsample(_with_features(pairs, images, lambda p: p.image_id, _pair_where, skip), limit)
        self.images = images
        self.token_ids = pieces.captions([p.hypothesis for p in self.pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, i: int) -> str:
        return f"image {self.pairs[i].image_id}, hypothesis {_pair_where(self.pairs[i])}"

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        return {"input_ids": self.token_ids[i], "phrases": [], "label": VE_LABELS.index(p.label),
                **self.images(p.image_id)}


class GroundingDataset(Dataset):
    """Sentences of ``grounding_examples`` with their image's regions; the collator turns the
    mentions into IoU targets per region."""

    def __init__(self, examples: list[dict], images, limit: int = 0):
        self.examples = _subsample(examples, limit)
        self.images = images

    def __len__(self) -> int:
        return len(self.examples)

    def describe(self, i: int) -> str:
        return f"image {self.examples[i]['image_id']}, sentence {self.examples[i]['sentence_index']}"

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        return {**ex, **self.images(ex["image_id"])}


class TaskCollator:
    """The pre-training collator without masking, plus each task's targets.

    VQA: ``answer_targets`` (B, A) soft scores. SNLI-VE: ``labels`` (B,). Grounding:
    ``mention_weights`` (B, K, N) averaging each mention's word pieces, ``mention_iou`` (B, K, R)
    the IoU of each region with the mention's box, ``mention_mask`` (B, K).
    ``mask_regions`` hides every region and tag (a question-only model).
    """

    def __init__(self, base: Collator, num_answers: int = 0, mask_regions: bool = False,
                 protocol: str = "merged"):
        self.base, self.num_answers, self.mask_regions, self.protocol = base, num_answers, mask_regions, protocol
        self.generator = None  # nothing random: the trainer has nothing to re-seed

    def __call__(self, items: list[dict]) -> dict:
        batch = self.base(items)
        for key in ("mlm_input_ids", "mlm_phrase_ids", "mlm_labels", "phrase_labels", "phrase_masked", "tag_labels"):
            batch.pop(key, None)
        if "targets" in items[0]:
            targets = torch.zeros(len(items), self.num_answers)
            for b, it in enumerate(items):
                for a, score in it["targets"].items():
                    targets[b, a] = score
            batch["answer_targets"] = targets
        if "label" in items[0]:
            batch["labels"] = torch.tensor([it["label"] for it in items])
        if "mentions" in items[0]:
            batch.update(self._mentions(items, batch["input_ids"].shape[1], batch["region_mask"].shape[1]))
        if self.mask_regions:
            batch["region_mask"] = torch.zeros_like(batch["region_mask"])
            batch["region_feats"] = torch.zeros_like(batch["region_feats"])
            batch["tag_mask"] = torch.zeros_like(batch["tag_mask"])
        return batch

    def _mentions(self, items: list[dict], n_tokens: int, n_regions: int) -> dict:
        k = max(len(it["mentions"]) for it in items)
        weights = torch.zeros(len(items), k, n_tokens)
        iou = torch.zeros(len(items), k, n_regions)
        mask = torch.zeros(len(items), k, dtype=torch.bool)
        for b, it in enumerate(items):
            boxes = np.asarray(it["boxes"], dtype=np.float32).reshape(-1, 4)
            for m, (pos, gt) in enumerate(it["mentions"]):
                weights[b, m, pos] = 1.0 / len(pos)
                mask[b, m] = True
                if len(boxes):
                    iou[b, m, : len(boxes)] = torch.from_numpy(
                        box_iou(boxes, ground_truth_box(gt, self.protocol)).max(1).astype(np.float32))
        return {"mention_weights": weights, "mention_iou": iou, "mention_mask": mask}
