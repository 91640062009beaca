"""Training recipes as data: which objectives, which parameters train, how a batch becomes losses.

Pre-training stage 1 trains the uni-modal encoders on L1 = MCR^v + MCR^s + VSC; stage 2
trains everything on L2 = L1 + MLM + ITM + WPG (paper 3.4). Each objective can be left out
of a stage's list, and the phrase / tag inputs can be switched off, for the ablations.
The merged-attention model (Table 4, "MergAttn") has its own losses (``merged.py``) on the
same two stages: MCR^v + MCR^s in stage 1, MCR^v + MCR^s + WPG + MLM + ITM in stage 2, no VSC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.config import Config, ObjectiveConfig, task_kind
from ..core.distributed import gather_cat
from ..core.errors import ConfigError
from ..model import losses as L
from ..model.losses import grounding_loss, mention_outputs, vqa_loss
from ..model.modeling import MVPTR
from .merged import merged_losses

OBJECTIVES = ("mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg")
CROSS_MODAL = ("mlm", "itm", "wpg")
# parameters that only the cross-modal objectives reach (the merged-attention model has no
# multimodal encoder: its ITM and MLM heads are its only such parameters)
CROSS_MODAL_MODULES = ("multimodal_encoder.", "mlm_head.", "itm_head.")


@dataclass
class Recipe:
    """``weights``: each loss's weight in the sum the optimizer steps on (unlisted: 1);
    ``lr_scale``: a parameter's learning rate as a multiple of the stage's."""

    name: str
    loss: Callable[[MVPTR, dict, torch.Generator], dict[str, torch.Tensor]]
    trainable: Callable[[str], bool] = field(default=lambda name: True)
    weights: dict[str, float] = field(default_factory=dict)
    lr_scale: Callable[[str], float] = field(default=lambda name: 1.0)


def pretraining_recipe(name: str, objectives: list[str], obj: ObjectiveConfig, merged: bool = False,
                       cross_modal_lr_scale: float = 1.0, *, negative_warmup_steps: int = 0,
                       loss_weights: dict[str, float] | None = None) -> Recipe:
    """``merged``: the recipe of the merged-attention model. ``cross_modal_lr_scale``,
    ``negative_warmup_steps`` and ``loss_weights`` are the stage's (``StageConfig``): each stage,
    and retrieval fine-tuning, has its own. A stage without a cross-modal objective leaves the
    parameters only those reach (``CROSS_MODAL_MODULES``) untrained; ``cross_modal_lr_scale``
    multiplies their learning rate."""
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"{name}: unknown objectives {unknown} (known: {', '.join(OBJECTIVES)})")
    if obj.wpg_variant not in ("paper", "official"):
        raise ConfigError(f"unknown wpg_variant {obj.wpg_variant!r} (expected 'paper' or 'official')")
    active = [o for o in objectives if getattr(obj, o)]
    if not active:
        raise ConfigError(f"{name}: every objective is switched off")
    cross = any(o in CROSS_MODAL for o in active)
    if merged:
        check_merged_objectives(name, active, obj)

    def trainable(param_name: str) -> bool:
        return cross or not param_name.startswith(CROSS_MODAL_MODULES)

    def lr_scale(param_name: str) -> float:
        return cross_modal_lr_scale if param_name.startswith(CROSS_MODAL_MODULES) else 1.0

    def loss(model: MVPTR, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if merged:
            return merged_losses(model, batch, active, obj, generator)
        hardness = negative_hardness(batch.get("step"), negative_warmup_steps)
        return pretraining_losses(model, batch, active, obj, generator, hardness)

    return Recipe(name, loss, trainable, dict(loss_weights or {}), lr_scale)


def negative_hardness(step: int | None, warmup_steps: int) -> float:
    """The factor on the sampling logits of ITM / WPG negatives: rising linearly from 0 (uniform)
    to 1 (the paper's p^{v2s} / p^{s2v}) over ``warmup_steps``; 1 outside a training step."""
    if warmup_steps <= 0 or step is None:
        return 1.0
    return min(1.0, step / warmup_steps)


def check_merged_objectives(name: str, active: list[str], obj: ObjectiveConfig) -> None:
    """What the merged-attention model cannot train is an error, not ignored. Its negatives are
    uniform, so the negative warm-up (from uniform to the similarity) has nothing to change."""
    if "vsc" in active:
        raise ConfigError(
            f"{name}: VSC needs the global embeddings of uni-modal encoders, which the merged-attention model "
            "(model.merged_attention) does not have; it trains with MCR^v + MCR^s + WPG + MLM + ITM "
            f"(Table 4): set objectives.vsc=false or leave vsc out of {name}.objectives")
    if any(o in CROSS_MODAL for o in active) and obj.negative_sampling == "hardest":
        raise ConfigError(
            f"objectives.negative_sampling={obj.negative_sampling}: the merged-attention model has no uni-modal "
            "similarity to choose hard negatives by; its negatives are drawn uniformly (leave it at 'sampled' or "
            "'uniform')")


def pretraining_losses(
    model: MVPTR, batch: dict, active: list[str], obj: ObjectiveConfig, generator: torch.Generator | None = None,
    hardness: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``hardness``: the factor on the sampling logits of the ITM / WPG negatives (``negative_hardness``)."""
    text = model.encode_text(batch["input_ids"], batch["word_mask"], batch["phrase_ids"], batch["phrase_mask"])
    image = model.encode_image(batch["tag_pieces"], batch["tag_mask"], batch["region_feats"], batch["region_mask"])
    out: dict[str, torch.Tensor] = {}

    # every row goes through the concept heads (a few thousand classes): choosing the rows
    # with labels would cost a wait for the device, more than the rows cost
    if "mcr_s" in active and obj.use_phrases and obj.mcr_s_loss:
        logits = model.mcr_phrase_logits(text.phrase_hidden)
        out["mcr_s"] = L.mcr_loss(logits, batch["phrase_labels"], obj.mcr_matching, obj.loss_average)
    if "mcr_v" in active and obj.use_tags:
        logits = model.mcr_tag_logits(image.tag_hidden)
        out["mcr_v"] = L.mcr_loss(logits, batch["tag_labels"], obj.mcr_matching, obj.loss_average)

    sim = L.vsc_logits(image.global_emb, text.global_emb, model.logit_scale)  # images x texts
    if "vsc" in active:
        # negatives from every process's share of the batch (the identity in a single process)
        out["vsc"] = L.vsc_loss(gather_cat(image.global_emb), gather_cat(text.global_emb), model.logit_scale)
    if not any(o in active for o in CROSS_MODAL):
        return out

    b = len(sim)
    idx = torch.arange(b, device=sim.device)
    same_image = batch["image_index"][:, None] == batch["image_index"][None, :]
    # p^{s2v}: for each text, a distribution over the batch's images; p^{v2s}: the reverse
    neg_image, ok_t = L.sample_negatives(hardness * sim.t(), same_image, obj.negative_sampling, generator)
    neg_text, ok_i = L.sample_negatives(hardness * sim, same_image, obj.negative_sampling, generator)
    # which texts get a negative image (text_side) and which images a negative text; a query
    # with no admissible negative keeps its slot, labelled IGNORE, so shapes never depend on data
    if obj.itm_negatives == "half_each":
        half = (b + 1) // 2
        text_side, image_side = idx[:half], idx[half:]
    elif obj.itm_negatives == "both":
        text_side, image_side = idx, idx
    else:
        raise ConfigError(f"unknown itm_negatives {obj.itm_negatives!r} (expected 'half_each' or 'both')")

    # one multimodal pass over positives and ITM negatives: (text index, image index) pairs
    t_idx = torch.cat([idx, text_side, neg_text[image_side]])
    v_idx = torch.cat([idx, neg_image[text_side], image_side])
    wpg_on = "wpg" in active and obj.use_phrases
    keep = (model.cfg.wpg_layer,) if wpg_on else ()
    # past WPG's layer this pass feeds only ITM's summary, unless MLM reads its word outputs
    mlm_reads_pass = "mlm" in active and "mlm_input_ids" not in batch
    summary_only = not mlm_reads_pass and max(keep, default=0) < model.cfg.multimodal_layers
    fused = model.fuse(text.hidden[t_idx], text.mask[t_idx], image.region_hidden[v_idx], image.region_mask[v_idx],
                       keep, summary_only=summary_only)

    if "itm" in active:
        negative = torch.zeros_like(t_idx[b:]).masked_fill(~torch.cat([ok_t[text_side], ok_i[image_side]]), L.IGNORE)
        labels = torch.cat([torch.ones_like(idx), negative])  # label 1 = matched pair
        out["itm"] = L.itm_loss(model.itm_logits(fused), labels)
    if "mlm" in active:
        if "mlm_input_ids" in batch:  # a pass of its own over the word-masked captions
            masked_text = model.encode_text(
                batch["mlm_input_ids"], batch["word_mask"], batch["mlm_phrase_ids"], batch["phrase_mask"]
            )
            mlm_hidden = model.fuse(masked_text.hidden, masked_text.mask, image.region_hidden, image.region_mask).hidden
        else:
            mlm_hidden = fused.hidden[:b]
        out["mlm"] = L.masked_word_loss(model.mlm_logits, mlm_hidden[:, : text.num_words], batch["mlm_labels"],
                                        obj.loss_average)
    if wpg_on and obj.wpg_variant == "official":
        out["wpg"] = _wpg_official(model, text, image, fused, batch, obj.wpg_margin, generator)
    elif wpg_on:
        rest = idx[len(text_side) :] if obj.itm_negatives == "half_each" else idx[:0]
        out["wpg"] = _wpg(model, text, image, fused, batch, idx, text_side, rest, neg_image, ok_t, obj.wpg_margin)
    return out


def _wpg_official(model, text, image, fused, batch, margin, generator) -> torch.Tensor:
    """WPG as released: the positive pairs' outputs at the WPG layer; each text's phrases against
    the regions of a uniformly random other image of the batch (as encoded with its own
    caption), each phrase scored by a random one of its top 3 regions; masked phrases count."""
    n, m, b = text.num_words, text.phrase_hidden.shape[1], len(text.hidden)
    h = fused.layers[model.cfg.wpg_layer][:b]
    regions, region_mask = h[:, n + m :], image.region_mask
    dev = None if generator is None else generator.device
    shift = torch.randint(1, max(b, 2), (b,), generator=generator, device=dev)  # 1..b-1: another image
    other = (torch.arange(b, device=h.device) + shift.to(h.device)) % b

    def score(v: torch.Tensor):
        return L.wpg_similarity(h[:, n : n + m], batch["phrase_mask"], regions[v], region_mask[v], 3, generator)

    pos, valid = score(torch.arange(b, device=h.device))
    neg, _ = score(other)
    return L.wpg_loss(pos, neg, valid & (other != torch.arange(b, device=h.device)), margin)


def _wpg(model, text, image, fused, batch, idx, text_side, rest, neg_image, ok_t, margin) -> torch.Tensor:
    """WPG at the chosen multimodal layer; each text against its sampled hard negative image.
    The texts of ``text_side`` reuse their pair of the ITM pass; those of ``rest`` get a pass
    of their own, up to the WPG layer."""
    layer = model.cfg.wpg_layer
    n, m = text.num_words, text.phrase_hidden.shape[1]
    b = len(idx)

    # a masked phrase no longer names its concept: it does not take part
    phrases = batch["phrase_mask"] & ~batch["phrase_masked"]

    def phrase_region_sim(h: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
        return L.wpg_similarity(h[:, n : n + m], phrases[t], h[:, n + m :], image.region_mask[v])

    pos, valid = phrase_region_sim(fused.layers[layer][:b], idx, idx)
    neg = torch.zeros_like(pos)
    neg[text_side], _ = phrase_region_sim(fused.layers[layer][b : b + len(text_side)], text_side, neg_image[text_side])
    if len(rest):
        extra = model.fuse(
            text.hidden[rest], text.mask[rest], image.region_hidden[neg_image[rest]],
            image.region_mask[neg_image[rest]], stop_after=layer,
        )
        neg[rest], _ = phrase_region_sim(extra.hidden, rest, neg_image[rest])
    return L.wpg_loss(pos, neg, valid & ok_t, margin)


def task_recipe(task: str, cfg: Config, merged: bool = False) -> Recipe:
    """``merged``: for the merged-attention model (retrieval: ITM alone, as it has no VSC)."""
    kind = task_kind(task)
    if kind == "retrieval":  # VSC + ITM by default (paper 4.2.1); the merged model has no VSC to train
        train = cfg.finetune.retrieval.train
        objectives = [o for o in train.objectives if not (merged and o == "vsc")]
        return pretraining_recipe(task, objectives, cfg.objectives, merged,
                                  negative_warmup_steps=train.negative_warmup_steps, loss_weights=train.loss_weights)

    def loss(model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _, fused = model.fuse_batch(batch)
        if kind == "grounding":
            phrase = mention_outputs(fused.hidden, batch["mention_weights"])
            regions = fused.region_hidden
            return {"grounding": grounding_loss(phrase, regions, batch["region_mask"], batch["mention_iou"],
                                                batch["mention_mask"])}
        logits = model.task_logits(fused)
        if kind == "vqa":
            return {"vqa": vqa_loss(logits, batch["answer_targets"])}
        return {"ve": F.cross_entropy(logits.float(), batch["labels"])}

    return Recipe(task, loss)
