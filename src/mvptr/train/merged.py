"""The shared passes of the merged-attention model (Table 4, "MergAttn"): MCR^v, MCR^s, WPG,
MLM and ITM all read one encoder over the whole sequence {w, c, t, r}. Stage 1 runs MCR^v +
MCR^s alone, on the same joint pass of each caption with its image.

Without uni-modal encoders there are no global embeddings: no VSC (``Objective.merged``), and
no similarity to draw hard negatives from, so the ITM and WPG negatives are drawn uniformly
from the batch's other images (and texts), never from the same image's captions. One joint
pass over each caption with its image feeds MCR^v, MCR^s, ITM's positives and WPG's positive
scores; ITM's negative pairs get their own rows of that pass, and WPG reads them at its layer
(texts without an ITM negative image get a pass of their own up to that layer, as in the
two-stream model). MLM reads a pass of its own over the word-masked captions
(``objectives.mlm_separate_pass``) or the joint pass with masked words.
"""

from __future__ import annotations

import torch

from ..core.config import ObjectiveConfig
from ..model import losses as L
from ..model.modeling import MVPTR, FusedOutput, ImageOutput, TextOutput
from .objective import Objective
from .passes import Passes, draw_pairs


def joint(model: MVPTR, text: TextOutput, image: ImageOutput, t: torch.Tensor, v: torch.Tensor, *,
          keep_layers: tuple[int, ...] = (), stop_after: int | None = None) -> FusedOutput:
    """Texts ``t`` with images ``v`` (index tensors) through the merged encoder."""
    return model.fuse(text.hidden[t], text.mask[t], image.region_hidden[v], image.region_mask[v], keep_layers,
                      stop_after=stop_after, tag_hidden=image.tag_hidden[v], tag_mask=image.tag_mask[v])


class MergedPasses(Passes):
    """The captions' and images' input rows, and their joint pass (with the negatives, when an
    objective needs them)."""

    merged = True

    def __init__(self, model: MVPTR, batch: dict, active: list[Objective], obj: ObjectiveConfig,
                 generator: torch.Generator | None = None):
        super().__init__(model, batch, active, obj, generator)
        b = batch
        self.text = model.text_inputs(b["input_ids"], b["word_mask"], b["phrase_ids"], b["phrase_mask"])
        self.image = model.image_inputs(b["tag_pieces"], b["tag_mask"], b["region_feats"], b["region_mask"])
        n = len(self.text.hidden)
        self.idx = t_idx = v_idx = torch.arange(n, device=self.text.hidden.device)
        if any(o.negatives for o in self.running()):
            uniform = torch.zeros(n, n, device=self.idx.device)  # softmax of equal logits: uniform over the others
            self.pairs = draw_pairs(uniform, uniform, batch, "sampled", obj.itm_negatives, generator)
            t_idx, v_idx = self.pairs.t_idx, self.pairs.v_idx
        keep = (model.wpg_depth,) if self.keeps_wpg_layer() else ()
        self.fused = joint(model, self.text, self.image, t_idx, v_idx, keep_layers=keep)

    def phrase_hidden(self) -> torch.Tensor:
        return self.fused.hidden[: len(self.idx), self.text.num_words : self.fused.text_len]

    def tag_hidden(self) -> torch.Tensor:
        return self.fused.tag_hidden[: len(self.idx)]

    def masked_words_hidden(self) -> torch.Tensor:
        b = self.batch
        if "mlm_input_ids" not in b:
            return self.fused.hidden[: len(self.idx)]
        # its phrases holding a masked word are masked too: no shortcut (as in the two-stream model)
        masked = self.model.text_inputs(b["mlm_input_ids"], b["word_mask"], b["mlm_phrase_ids"], b["phrase_mask"])
        return joint(self.model, masked, self.image, self.idx, self.idx).hidden

    def wpg_scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At ``model.wpg_depth``: each text against its uniformly drawn negative image."""
        model, text, image, fused, p = self.model, self.text, self.image, self.fused, self.pairs
        layer, n, b, side = model.wpg_depth, text.num_words, len(self.idx), p.text_side
        # a phrase masked for MCR^s no longer names its concept: it does not take part
        phrases = self.batch["phrase_mask"] & ~self.batch["phrase_masked"]

        def similarity(h: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
            return L.wpg_similarity(h[:, n : fused.text_len], phrases[t], fused.regions(h), image.region_mask[v])

        kept = fused.layers[layer]
        pos, valid = similarity(kept[:b], self.idx, self.idx)
        neg = torch.zeros_like(pos)
        neg[side], _ = similarity(kept[b : b + len(side)], side, p.neg_image[side])
        rest = p.without_negative_image(self.obj.itm_negatives)
        if len(rest):
            extra = joint(model, text, image, rest, p.neg_image[rest], stop_after=layer)
            neg[rest], _ = similarity(extra.hidden, rest, p.neg_image[rest])
        return pos, neg, valid & p.ok_t
