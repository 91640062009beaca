"""Pre-training losses of the merged-attention model (Table 4, "MergAttn"): MCR^v + MCR^s +
WPG + MLM + ITM, all read from one encoder over the whole sequence {w, c, t, r}. Stage 1
runs MCR^v + MCR^s alone, on the same joint pass of each caption with its image.

Without uni-modal encoders there are no global embeddings: no VSC, and no similarity to draw
hard negatives from, so the ITM and WPG negatives are drawn uniformly from the batch's other
images (and texts), never from the same image's captions. One joint pass over each caption
with its image feeds MCR^v, MCR^s, ITM's positives and WPG's positive scores; ITM's negative
pairs get their own rows of that pass, and WPG reads them at its layer (texts without an ITM
negative image get a pass of their own up to that layer, as in the two-stream recipe).
MLM reads a pass of its own over the word-masked captions (``objectives.mlm_separate_pass``)
or the joint pass with masked words.
"""

from __future__ import annotations

import torch

from ..core.config import ObjectiveConfig
from ..core.errors import ConfigError
from ..model import losses as L
from ..model.modeling import MVPTR, FusedOutput, ImageOutput, TextOutput


def itm_sides(idx: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which texts get a negative image and which images a negative text (``itm_negatives``)."""
    if mode == "half_each":
        half = (len(idx) + 1) // 2
        return idx[:half], idx[half:]
    if mode == "both":
        return idx, idx
    raise ConfigError(f"unknown itm_negatives {mode!r} (expected 'half_each' or 'both')")


def joint(model: MVPTR, text: TextOutput, image: ImageOutput, t: torch.Tensor, v: torch.Tensor,
          keep_layers: tuple[int, ...] = (), stop_after: int | None = None) -> FusedOutput:
    """Texts ``t`` with images ``v`` (index tensors) through the merged encoder."""
    return model.fuse(text.hidden[t], text.mask[t], image.region_hidden[v], image.region_mask[v], keep_layers,
                      stop_after, tag_hidden=image.tag_hidden[v], tag_mask=image.tag_mask[v])


def merged_losses(
    model: MVPTR, batch: dict, active: list[str], obj: ObjectiveConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    text = model.text_inputs(batch["input_ids"], batch["word_mask"], batch["phrase_ids"], batch["phrase_mask"])
    image = model.image_inputs(batch["tag_pieces"], batch["tag_mask"], batch["region_feats"], batch["region_mask"])
    b, n = len(text.hidden), text.num_words
    idx = torch.arange(b, device=text.hidden.device)
    wpg_on = "wpg" in active and obj.use_phrases

    t_idx = v_idx = idx
    if "itm" in active or wpg_on:
        same_image = batch["image_index"][:, None] == batch["image_index"][None, :]
        uniform = torch.zeros(b, b, device=idx.device)  # softmax of equal logits: uniform over the others
        neg_image, ok_t = L.sample_negatives(uniform, same_image, "sampled", generator)
        neg_text, ok_i = L.sample_negatives(uniform, same_image, "sampled", generator)
        text_side, image_side = itm_sides(idx, obj.itm_negatives)
        t_idx = torch.cat([idx, text_side, neg_text[image_side]])
        v_idx = torch.cat([idx, neg_image[text_side], image_side])
    fused = joint(model, text, image, t_idx, v_idx, (model.wpg_depth,) if wpg_on else ())

    out: dict[str, torch.Tensor] = {}
    if "mcr_s" in active and obj.use_phrases:
        logits = model.mcr_phrase_logits(fused.hidden[:b, n : fused.text_len])
        out["mcr_s"] = L.mcr_loss(logits, batch["phrase_labels"], obj.mcr_matching, obj.loss_average)
    if "mcr_v" in active and obj.use_tags:
        out["mcr_v"] = L.mcr_loss(model.mcr_tag_logits(fused.tag_hidden[:b]), batch["tag_labels"], obj.mcr_matching,
                                  obj.loss_average)
    if "itm" in active:
        negative = torch.zeros_like(t_idx[b:]).masked_fill(~torch.cat([ok_t[text_side], ok_i[image_side]]), L.IGNORE)
        out["itm"] = L.itm_loss(model.itm_logits(fused), torch.cat([torch.ones_like(idx), negative]))
    if "mlm" in active:
        if "mlm_input_ids" in batch:  # a pass of its own over the word-masked captions
            # its phrases holding a masked word are masked too: no shortcut (as in the two-stream recipe)
            masked = model.text_inputs(batch["mlm_input_ids"], batch["word_mask"], batch["mlm_phrase_ids"],
                                       batch["phrase_mask"])
            mlm_hidden = joint(model, masked, image, idx, idx).hidden
        else:
            mlm_hidden = fused.hidden[:b]
        out["mlm"] = L.masked_word_loss(model.mlm_logits, mlm_hidden[:, :n], batch["mlm_labels"], obj.loss_average)
    if wpg_on:
        rest = idx[len(text_side) :] if obj.itm_negatives == "half_each" else idx[:0]
        out["wpg"] = _wpg(model, text, image, fused, batch, text_side, rest, neg_image, ok_t, obj.wpg_margin)
    return out


def _wpg(model, text, image, fused, batch, text_side, rest, neg_image, ok_t, margin) -> torch.Tensor:
    """WPG at ``model.wpg_depth``: each text against its uniformly drawn negative image."""
    layer, n, b = model.wpg_depth, text.num_words, len(ok_t)
    # a phrase masked for MCR^s no longer names its concept: it does not take part
    phrases = batch["phrase_mask"] & ~batch["phrase_masked"]

    def similarity(h: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
        return L.wpg_similarity(h[:, n : fused.text_len], phrases[t], fused.regions(h), image.region_mask[v])

    idx = torch.arange(b, device=ok_t.device)
    kept = fused.layers[layer]
    pos, valid = similarity(kept[:b], idx, idx)
    neg = torch.zeros_like(pos)
    neg[text_side], _ = similarity(kept[b : b + len(text_side)], text_side, neg_image[text_side])
    if len(rest):
        extra = joint(model, text, image, rest, neg_image[rest], stop_after=layer)
        neg[rest], _ = similarity(extra.hidden, rest, neg_image[rest])
    return L.wpg_loss(pos, neg, valid & ok_t, margin)
