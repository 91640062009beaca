"""The paper's six pre-training objectives (section 3.3), each one declaration: its loss over
the shared passes (``passes.py``) and what it needs. Stage 1 trains the uni-modal encoders on
L1 = MCR^v + MCR^s + VSC; stage 2 everything on L2 = L1 + MLM + ITM + WPG (paper 3.4)."""

from __future__ import annotations

import torch

from ..core.config import ObjectiveConfig
from ..core.distributed import gather_cat
from ..core.errors import ConfigError
from ..model import losses as L
from .objective import Objective
from .passes import Passes


# every row goes through the concept heads (a few thousand classes): choosing the rows with
# labels would cost a wait for the device, more than the rows cost
def mcr_s_loss(p: Passes) -> torch.Tensor | None:
    """Eq. 3: the masked phrases' concepts; with ``mcr_s_loss=false`` (official code) phrases are masked, no loss."""
    if not p.obj.mcr_s_loss:
        return None
    logits = p.model.mcr_phrase_logits(p.phrase_hidden())
    return L.mcr_loss(logits, p.batch["phrase_labels"], p.obj.mcr_matching, p.obj.loss_average)


def mcr_v_loss(p: Passes) -> torch.Tensor:
    """Eq. 2: the masked tags' concepts."""
    logits = p.model.mcr_tag_logits(p.tag_hidden())
    return L.mcr_loss(logits, p.batch["tag_labels"], p.obj.mcr_matching, p.obj.loss_average)


def vsc_loss(p: Passes) -> torch.Tensor:
    """Eqs. 4-5, with negatives from every process's share of the batch (the identity in one process)."""
    return L.vsc_loss(gather_cat(p.image.global_emb), gather_cat(p.text.global_emb), p.model.logit_scale)


def itm_loss(p: Passes) -> torch.Tensor:
    """Eq. 8 over the matched pairs and the ITM negatives of the pair pass."""
    return L.itm_loss(p.model.itm_logits(p.fused), p.pairs.itm_labels())


def mlm_loss(p: Passes) -> torch.Tensor:
    """Eq. 9: the masked word pieces, from the multimodal outputs."""
    hidden = p.masked_words_hidden()[:, : p.text.num_words]
    return L.masked_word_loss(p.model.mlm_logits, hidden, p.batch["mlm_labels"], p.obj.loss_average)


def wpg_loss(p: Passes) -> torch.Tensor:
    """Eqs. 6-7: the hinge between a text's phrase-region similarity with its image and with a negative one."""
    pos, neg, valid = p.wpg_scores()
    return L.wpg_loss(pos, neg, valid, p.obj.wpg_margin)


def check_wpg(obj: ObjectiveConfig) -> None:
    if obj.wpg_variant not in ("paper", "official"):
        raise ConfigError(f"unknown wpg_variant {obj.wpg_variant!r} (expected 'paper' or 'official')")


def _separate_pass_absent(batch: dict) -> bool:
    """MLM reads the pair pass's word outputs when its masked words have no pass of their own."""
    return "mlm_input_ids" not in batch


MCR_S = Objective("mcr_s", mcr_s_loss, "MCR$^s$ (masked phrases)", masks="phrases", inputs=("phrases",))
MCR_V = Objective("mcr_v", mcr_v_loss, "MCR$^v$ (masked tags)", masks="tags", inputs=("tags",))
VSC = Objective("vsc", vsc_loss, "VSC (contrastive)", merged=False)  # it reads the uni-modal global embeddings
ITM = Objective("itm", itm_loss, "ITM (matching)", cross_modal=True, negatives=True)
MLM = Objective("mlm", mlm_loss, "MLM (masked words)", masks="words", cross_modal=True,
                reads_pair_words=_separate_pass_absent)
WPG = Objective("wpg", wpg_loss, "WPG (weak grounding)", inputs=("phrases",), cross_modal=True, negatives=True,
                keeps_wpg_layer=True, check=check_wpg)
# in the order their losses are computed and summed
BUILTIN = (MCR_S, MCR_V, VSC, ITM, MLM, WPG)
