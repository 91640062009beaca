"""The keys of a collated batch, in one documented type.

Shapes: B samples, N word pieces, M phrases, T tags (P pieces per tag), R regions, D feature
width, K mentions, A answers. IGNORE (-100) marks "no target" in label tensors, as torch's
cross entropy does. ``Collator`` (collate.py) writes the pre-training keys, ``TaskCollator``
(tasks.py) adds a task's, the trainer adds ``step``, ``micro`` and ``sample_index``.
"""

from __future__ import annotations

from typing import TypedDict

import torch


class Batch(TypedDict, total=False):
    """A collated batch (a dict: each key is present when its collator or stage writes it)."""

    input_ids: torch.Tensor
    """(B, N) word-piece ids of the captions, [CLS] ... [SEP], 0-padded; with MLM in the shared pass
    (``objectives.mlm_separate_pass=false``) its masked words are [MASK] or replaced."""
    mlm_input_ids: torch.Tensor
    """(B, N) the captions with the words masked for MLM, for MLM's pass of its own (absent when shared)."""
    word_mask: torch.Tensor
    """(B, N) bool: a word piece is there (not padding)."""
    mlm_labels: torch.Tensor
    """(B, N) the original id of each word piece masked for MLM, IGNORE elsewhere."""
    phrase_ids: torch.Tensor
    """(B, M) rows of the shared embedding table for the phrase concepts (word rows + phrase index);
    [MASK] for a phrase masked for MCR^s, 0 for padding."""
    mlm_phrase_ids: torch.Tensor
    """(B, M) ``phrase_ids`` of MLM's own pass: also [MASK] where a phrase was parsed from a masked word."""
    phrase_mask: torch.Tensor
    """(B, M) bool: a phrase is there."""
    phrase_labels: torch.Tensor
    """(B, M) the phrase-vocabulary index of each phrase masked for MCR^s, IGNORE elsewhere."""
    phrase_masked: torch.Tensor
    """(B, M) bool: the phrase's row in ``phrase_ids`` is not its own (WPG leaves it out)."""
    tag_pieces: torch.Tensor
    """(B, T, P) the word pieces of each tag (concept mode: the tag-class rows' pieces; word-piece
    mode: (B, T, 1), one piece per unit), with masked tags as [MASK]."""
    tag_mask: torch.Tensor
    """(B, T) bool: a tag is there."""
    tag_labels: torch.Tensor
    """(B, T) the target of each tag masked for MCR^v (a tag class; a word id in word-piece mode),
    IGNORE elsewhere."""
    region_feats: torch.Tensor
    """(B, R, D) float region features (detector features and the 6 box numbers), 0-padded."""
    region_mask: torch.Tensor
    """(B, R) bool: a region is there."""
    boxes: torch.Tensor
    """(B, R, 4) float region boxes in pixels, x1 y1 x2 y2."""
    image_size: torch.Tensor
    """(B, 2) float width and height of each image in pixels."""
    image_index: torch.Tensor
    """(B,) the image of each sample; samples of one image are never each other's negatives."""
    answer_targets: torch.Tensor
    """(B, A) VQA: the soft score of each answer."""
    labels: torch.Tensor
    """(B,) SNLI-VE: the class of each pair."""
    mention_weights: torch.Tensor
    """(B, K, N) grounding: weights averaging each mention's word pieces."""
    mention_iou: torch.Tensor
    """(B, K, R) grounding: the IoU of each region with the mention's box."""
    mention_mask: torch.Tensor
    """(B, K) bool grounding: a mention is there."""
    step: int
    """The optimizer step the batch belongs to (the trainer; recipes read it for their schedules)."""
    micro: int
    """Which of the step's accumulated forward passes it is (the trainer)."""
    sample_index: list[int]
    """The dataset index of each sample (the trainer: names the samples of a skipped step)."""
