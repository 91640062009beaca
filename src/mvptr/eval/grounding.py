"""Phrase grounding on Flickr30k Entities files (paper 4.2.3).

A mention's representation is the mean of the multimodal outputs of its word pieces; it
is grounded to the region whose multimodal output is most similar (cosine). A mention is
correct when that region's box has IoU > 0.5 with the ground truth (the union of the
entity's boxes, the original Flickr30k Entities protocol, or any one of them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import distributed
from ..core.errors import FormatError
from ..model.modeling import MVPTR
from ..vision.regions import box_iou, ground_truth_box


@torch.no_grad()
def choose_regions(model: MVPTR, batch: dict, mentions: list[list]) -> list[list[int]]:
    """The region chosen for each mention of each caption of a collated batch (-1 where the
    image has no regions): the one whose multimodal output is most similar (cosine) to the
    mean multimodal output of the mention's word pieces. mentions[b]: (positions, ...) pairs."""
    _, fused = model.fuse_batch(batch)
    regions = F.normalize(fused.region_hidden.float(), dim=-1)
    chosen = []
    for b, caption_mentions in enumerate(mentions):
        n_regions = int(batch["region_mask"][b].sum())
        picks = []
        for pos, *_ in caption_mentions:
            if n_regions == 0:
                picks.append(-1)
                continue
            phrase = F.normalize(fused.hidden[b, pos].float().mean(0), dim=-1)
            picks.append(int((regions[b, :n_regions] @ phrase).argmax()))
        chosen.append(picks)
    return chosen


@torch.no_grad()
def evaluate_grounding(
    model: MVPTR, examples: list[dict], images, collate, batch_size: int = 64,
    device: str = "cpu", *, protocol: str = "merged",
) -> dict:
    """Accuracy (%) of zero-shot or fine-tuned grounding, and the accuracy of a random region.
    Under torchrun each process takes its share of the examples and the counts are summed.
    No mention at all is an error. A mention whose image has no regions counts as a miss."""
    correct, chance, total = 0, 0.0, 0
    model.eval()
    examples = examples[distributed.shard(len(examples))]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        items = [{**ex, **images(ex["image_id"])} for ex in chunk]
        batch = {k: v.to(device) for k, v in collate(items).items()}
        chosen = choose_regions(model, batch, [ex["mentions"] for ex in chunk])
        for b, ex in enumerate(chunk):
            n_regions = int(batch["region_mask"][b].sum())
            if n_regions == 0:
                total += len(ex["mentions"])
                continue
            det = items[b]["boxes"][:n_regions]
            for (_, gt_boxes), best in zip(ex["mentions"], chosen[b]):
                hits = box_iou(det, ground_truth_box(gt_boxes, protocol)).max(1) > 0.5
                correct += int(hits[best])
                chance += float(hits.mean())
                total += 1
    correct, chance, total = distributed.total(torch.tensor([correct, chance, total], dtype=torch.float64)).tolist()
    if total == 0:  # an accuracy of nothing is no number at all
        raise FormatError("grounding: no mentions to evaluate (no example has a mention with boxes)")
    return {
        "acc": round(100.0 * correct / total, 2),
        "chance": round(100.0 * chance / total, 2),
        "mentions": int(total),
    }
