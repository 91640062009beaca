"""The encoder passes a step's objectives share, computed once per step for all of them.

``Passes`` holds what every objective's loss reads: the model, the batch, the objective
settings, the step's random generator, the uni-modal outputs and, when an objective reads
the multimodal encoder (``Objective.cross_modal``), one multimodal pass over each caption
with its image followed by the ITM negatives (``Pairs``). ``TwoStreamPasses`` is the
paper's model (uni-modal encoders, then the multimodal one); ``merged.MergedPasses`` the
merged-attention model. Both answer the same questions (``phrase_hidden``, ``tag_hidden``,
``masked_words_hidden``, ``wpg_scores``), so one loss serves both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.config import ObjectiveConfig
from ..core.errors import ConfigError
from ..model import losses as L
from ..model.modeling import MVPTR
from .objective import Objective


def itm_sides(idx: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which texts get a negative image and which images a negative text (``itm_negatives``)."""
    if mode == "half_each":
        half = (len(idx) + 1) // 2
        return idx[:half], idx[half:]
    if mode == "both":
        return idx, idx
    raise ConfigError(f"unknown itm_negatives {mode!r} (expected 'half_each' or 'both')")


@dataclass
class Pairs:
    """The rows of the multimodal pass over pairs: (``t_idx``, ``v_idx``) = (text, image) indices,
    first the b matched pairs, then each text of ``text_side`` with its negative image
    ``neg_image``, then each image of ``image_side`` with its negative text ``neg_text``.
    ``ok_t`` / ``ok_i``: the queries that have an admissible negative at all."""

    idx: torch.Tensor
    neg_image: torch.Tensor
    ok_t: torch.Tensor
    neg_text: torch.Tensor
    ok_i: torch.Tensor
    text_side: torch.Tensor
    image_side: torch.Tensor

    @property
    def t_idx(self) -> torch.Tensor:
        return torch.cat([self.idx, self.text_side, self.neg_text[self.image_side]])

    @property
    def v_idx(self) -> torch.Tensor:
        return torch.cat([self.idx, self.neg_image[self.text_side], self.image_side])

    def itm_labels(self) -> torch.Tensor:
        """1 = matched pair, 0 = negative; a query with no admissible negative keeps its slot,
        labelled IGNORE, so shapes never depend on data."""
        ok = torch.cat([self.ok_t[self.text_side], self.ok_i[self.image_side]])
        negative = torch.zeros(len(ok), dtype=self.idx.dtype, device=self.idx.device).masked_fill(~ok, L.IGNORE)
        return torch.cat([torch.ones_like(self.idx), negative])

    def without_negative_image(self, itm_negatives: str) -> torch.Tensor:
        """The texts whose negative image is not in the pass (WPG gives them a pass of their own)."""
        return self.idx[len(self.text_side):] if itm_negatives == "half_each" else self.idx[:0]


def draw_pairs(s2v: torch.Tensor, v2s: torch.Tensor, batch: dict, sampling: str, itm_negatives: str,
               generator: torch.Generator | None) -> Pairs:
    """One negative image per text from the logits ``s2v`` (texts x images; p^{s2v}), then one
    negative text per image from ``v2s`` (images x texts; p^{v2s}), never a caption of the same image."""
    same_image = batch["image_index"][:, None] == batch["image_index"][None, :]
    neg_image, ok_t = L.sample_negatives(s2v, same_image, sampling, generator)
    neg_text, ok_i = L.sample_negatives(v2s, same_image, sampling, generator)
    idx = torch.arange(len(same_image), device=same_image.device)
    return Pairs(idx, neg_image, ok_t, neg_text, ok_i, *itm_sides(idx, itm_negatives))


class Passes:
    """The shared passes of one step; ``losses()`` runs the step's objectives over them."""

    merged = False
    text = image = fused = pairs = None

    def __init__(self, model: MVPTR, batch: dict, active: list[Objective], obj: ObjectiveConfig,
                 generator: torch.Generator | None = None):
        self.model, self.batch, self.active, self.obj, self.generator = model, batch, active, obj, generator

    def running(self) -> list[Objective]:
        """The active objectives whose inputs are switched on."""
        return [o for o in self.active if o.inputs_on(self.obj)]

    def keeps_wpg_layer(self) -> bool:
        return any(o.keeps_wpg_layer for o in self.running())

    def losses(self) -> dict[str, torch.Tensor]:
        out = {}
        for o in self.running():
            value = o.loss(self)
            if value is not None:
                out[o.name] = value
        return out


class TwoStreamPasses(Passes):
    """The paper's model: the captions and the images through their uni-modal encoders, their
    similarity (VSC's logits, which the negatives are drawn from), and the multimodal pass."""

    def __init__(self, model: MVPTR, batch: dict, active: list[Objective], obj: ObjectiveConfig,
                 generator: torch.Generator | None = None, hardness: float = 1.0):
        super().__init__(model, batch, active, obj, generator)
        b = batch
        self.text = model.encode_text(b["input_ids"], b["word_mask"], b["phrase_ids"], b["phrase_mask"])
        self.image = model.encode_image(b["tag_pieces"], b["tag_mask"], b["region_feats"], b["region_mask"])
        self.sim = L.vsc_logits(self.image.global_emb, self.text.global_emb, model.logit_scale)  # images x texts
        if any(o.cross_modal for o in active):
            self._pair_pass(hardness)

    def _pair_pass(self, hardness: float) -> None:
        """``hardness``: the factor on the sampling logits of the negatives (``recipes.negative_hardness``)."""
        model, obj = self.model, self.obj
        self.pairs = p = draw_pairs(hardness * self.sim.t(), hardness * self.sim, self.batch, obj.negative_sampling,
                                    obj.itm_negatives, self.generator)
        keep = (model.cfg.wpg_layer,) if self.keeps_wpg_layer() else ()
        # past WPG's layer this pass feeds only ITM's summary, unless an objective reads its word outputs
        reads_words = any(o.reads_pair_words(self.batch) for o in self.active)
        summary_only = not reads_words and max(keep, default=0) < model.cfg.multimodal_layers
        t, v = p.t_idx, p.v_idx
        self.fused = model.fuse(self.text.hidden[t], self.text.mask[t], self.image.region_hidden[v],
                                self.image.region_mask[v], keep, summary_only=summary_only)

    def phrase_hidden(self) -> torch.Tensor:
        return self.text.phrase_hidden

    def tag_hidden(self) -> torch.Tensor:
        return self.image.tag_hidden

    def masked_words_hidden(self) -> torch.Tensor:
        """The multimodal outputs of the captions with their words masked for MLM: a pass of their
        own (``mlm_input_ids``), or the matched pairs of the shared pass (whose words are masked)."""
        b, model, image = self.batch, self.model, self.image
        if "mlm_input_ids" not in b:
            return self.fused.hidden[: len(self.text.hidden)]
        masked = model.encode_text(b["mlm_input_ids"], b["word_mask"], b["mlm_phrase_ids"], b["phrase_mask"])
        return model.fuse(masked.hidden, masked.mask, image.region_hidden, image.region_mask).hidden

    def wpg_scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S(V, S), S(V', S), valid) per text at the WPG layer, as ``objectives.wpg_variant`` says."""
        return self._wpg_official() if self.obj.wpg_variant == "official" else self._wpg_paper()

    def _wpg_paper(self):
        """Each text against its sampled hard negative image. The texts of ``text_side`` reuse
        their pair of the ITM pass; the others get a pass of their own, up to the WPG layer."""
        model, text, image, p, fused = self.model, self.text, self.image, self.pairs, self.fused
        layer, n, m = model.cfg.wpg_layer, text.num_words, text.phrase_hidden.shape[1]
        b, side = len(p.idx), p.text_side
        # a masked phrase no longer names its concept: it does not take part
        phrases = self.batch["phrase_mask"] & ~self.batch["phrase_masked"]

        def phrase_region_sim(h: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
            return L.wpg_similarity(h[:, n : n + m], phrases[t], h[:, n + m :], image.region_mask[v])

        pos, valid = phrase_region_sim(fused.layers[layer][:b], p.idx, p.idx)
        neg = torch.zeros_like(pos)
        neg[side], _ = phrase_region_sim(fused.layers[layer][b : b + len(side)], side, p.neg_image[side])
        rest = p.without_negative_image(self.obj.itm_negatives)
        if len(rest):
            extra = model.fuse(text.hidden[rest], text.mask[rest], image.region_hidden[p.neg_image[rest]],
                               image.region_mask[p.neg_image[rest]], stop_after=layer)
            neg[rest], _ = phrase_region_sim(extra.hidden, rest, p.neg_image[rest])
        return pos, neg, valid & p.ok_t

    def _wpg_official(self):
        """WPG as released: the matched pairs' outputs at the WPG layer; each text's phrases against
        the regions of a uniformly random other image of the batch (as encoded with its own
        caption), each phrase scored by a random one of its top 3 regions; masked phrases count."""
        text, generator, fused = self.text, self.generator, self.fused
        n, m, b = text.num_words, text.phrase_hidden.shape[1], len(text.hidden)
        h = fused.layers[self.model.cfg.wpg_layer][:b]
        regions, region_mask = h[:, n + m :], self.image.region_mask
        dev = None if generator is None else generator.device
        shift = torch.randint(1, max(b, 2), (b,), generator=generator, device=dev)  # 1..b-1: another image
        idx = torch.arange(b, device=h.device)
        other = (idx + shift.to(h.device)) % b

        def score(v: torch.Tensor):
            phrases = self.batch["phrase_mask"]
            return L.wpg_similarity(h[:, n : n + m], phrases, regions[v], region_mask[v], 3, generator)

        pos, valid = score(idx)
        neg, _ = score(other)
        return pos, neg, valid & (other != idx)

