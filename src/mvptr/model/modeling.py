"""MVPTR: textual, visual and multimodal encoders over multi-level inputs (paper section 3).

Textual sequence: ``[CLS] w1..wN [SEP] c1..cM`` (words, then phrase concepts), segment 0.
Visual sequence: ``[CLS] t1..tK r1..rR`` (tag concepts, then regions), segment 1.
Multimodal sequence: the textual outputs followed by the region outputs only (tags and
the visual [CLS] are dropped so that MLM cannot copy tag words).

Phrases and tags are unordered sets: every phrase of a caption shares one position id
(the one after [SEP]) and every tag shares position 1, so permuting a set permutes its
outputs and nothing else. Regions get no position embedding; their boxes carry position.

``layout: official`` reproduces the released code's sequences for converted checkpoints:
``[CLS] w1..wN c1..cM [SEP]`` and ``[CLS] t1..tK [SEP] r1..rR`` with consecutive positions,
and regions embedded by their linear layer alone (optionally LayerNorm), without the
segment, position and embedding LayerNorm. Self-attention without positions is
order-free, so tokens keep their places here and only their position ids follow the
official order; ``ImageOutput.tag_start`` skips the visual [SEP].

``merged_attention`` (Table 4, "MergAttn") removes the uni-modal encoders: one encoder of
``text_layers + multimodal_layers`` layers reads the whole sequence
``[CLS] w1..wN [SEP] c1..cM t1..tK r1..rR`` (the textual inputs, then the tags and
regions embedded as in the visual sequence, without the visual [CLS]). It has no global
embeddings, so no VSC and no coarse ranking: ``encode_text``/``encode_image`` refuse it,
``text_inputs``/``image_inputs`` give its embedded inputs and ``fuse`` runs the one encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ConfigError
from ..text.tokenizer import CLS_ID, PAD_ID, SEP_ID
from .heads import PairClassifier, TiedClassifier
from .layers import Embeddings, Encoder
from .losses import vsc_scale


@dataclass
class TextOutput:
    hidden: torch.Tensor  # (B, N + M, H): words then phrases
    mask: torch.Tensor  # (B, N + M) bool
    num_words: int  # N, the padded word length
    global_emb: torch.Tensor | None  # (B, E), L2-normalised; None for embedded inputs

    @property
    def phrase_hidden(self) -> torch.Tensor:
        return self.hidden[:, self.num_words :]


@dataclass
class ImageOutput:
    hidden: torch.Tensor  # (B, 1 + K + R, H): [CLS], tags, regions
    mask: torch.Tensor  # (B, 1 + K + R) bool
    num_tags: int  # K, the padded tag length
    global_emb: torch.Tensor | None  # (B, E), L2-normalised; None for embedded inputs
    tag_start: int = 1  # 2 in the official layout, whose [SEP] follows [CLS] here; 0 when merged

    @property
    def tag_hidden(self) -> torch.Tensor:
        return self.hidden[:, self.tag_start : self.tag_start + self.num_tags]

    @property
    def tag_mask(self) -> torch.Tensor:
        return self.mask[:, self.tag_start : self.tag_start + self.num_tags]

    @property
    def region_hidden(self) -> torch.Tensor:
        return self.hidden[:, self.tag_start + self.num_tags :]

    @property
    def region_mask(self) -> torch.Tensor:
        return self.mask[:, self.tag_start + self.num_tags :]


@dataclass
class FusedOutput:
    hidden: torch.Tensor  # (P, N + M [+ K] + R, H) last computed layer; the tags only when merged
    mask: torch.Tensor
    layers: dict[int, torch.Tensor]  # kept intermediate layers (1-based)
    text_len: int  # N + M: the textual part comes first
    region_start: int  # where the regions start (after the text, and the merged model's tags)

    def regions(self, hidden: torch.Tensor) -> torch.Tensor:
        """The region rows of ``hidden`` (the last layer or a kept one)."""
        return hidden[:, self.region_start :]

    @property
    def region_hidden(self) -> torch.Tensor:
        return self.regions(self.hidden)

    @property
    def region_mask(self) -> torch.Tensor:
        return self.mask[:, self.region_start :]

    @property
    def tag_hidden(self) -> torch.Tensor:
        return self.hidden[:, self.text_len : self.region_start]


BOX_DIMS = 6  # a region vector ends with VinVL's box numbers: x1, y1, x2, y2, width, height


class RegionEmbedding(nn.Module):
    """A region's detector features and its 6 box numbers (the vector's last 6), each through a
    Linear and a LayerNorm, then added (UNITER's image embedding): the box gets as much of the
    embedding as the features, where one Linear of both lets the wider features drown it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.features = nn.Linear(cfg.region_feat_dim - BOX_DIMS, h)
        self.features_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.box = nn.Linear(BOX_DIMS, h)
        self.box_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, region_feats: torch.Tensor) -> torch.Tensor:
        appearance, box = region_feats[..., :-BOX_DIMS], region_feats[..., -BOX_DIMS:]
        return self.features_norm(self.features(appearance)) + self.box_norm(self.box(box))


class MVPTR(nn.Module):
    """The MVPTR network: embeddings, encoders and pre-training heads; no files, no tokenizer.

    What it holds:

    - ``cfg`` (:class:`~mvptr.core.config.ModelConfig`), fixed at construction;
    - one embedding table, ``cfg.vocab_size`` word rows (``word_rows``) followed by
      ``num_phrases`` phrase-concept rows (``phrase_rows``); words, tags and phrases share it;
    - ``tag_pieces`` (T, P), a buffer: the word pieces of each detector tag class, saved
      with the weights, so tag ids mean the same classes wherever the model is loaded;
    - two-stream (default): ``text_encoder``, ``visual_encoder``, ``multimodal_encoder``,
      the global projections ``text_proj`` / ``visual_proj`` and the VSC ``logit_scale``;
      merged (``cfg.merged_attention``): one ``encoder`` and no global embeddings;
    - the heads of MLM, MCR^s, MCR^v and ITM (``mlm_logits`` ... ``itm_logits``).

    What it promises:

    - ``encode_text`` / ``encode_image`` give each row's outputs and its L2-normalised global
      embedding (:class:`TextOutput`, :class:`ImageOutput`); the merged model refuses them
      (:class:`~mvptr.core.errors.ConfigError`);
    - ``fuse`` / ``fuse_outputs`` / ``fuse_batch`` read row i of the text with row i of the
      image (:class:`FusedOutput`);
    - padding (mask False) changes no output of a real token, and phrases and tags are sets:
      permuting them permutes their outputs only (both tested in tests/unit/model/test_model.py);
    - a settings combination it cannot honour is a ConfigError at construction, never ignored.

    Persistence is :mod:`mvptr.checkpoint.model_dir`'s (a model directory), task heads are
    :mod:`mvptr.model.task_models`', and losses are :mod:`mvptr.model.losses`'.
    """

    def __init__(self, cfg: ModelConfig, num_phrases: int, tag_pieces: torch.Tensor):
        """tag_pieces: (T, P) word-piece ids of each tag class, 0-padded."""
        super().__init__()
        if cfg.layout not in ("mvptr", "official"):
            raise ConfigError(f"unknown layout {cfg.layout!r} (expected 'mvptr' or 'official')")
        self.cfg = cfg
        self.num_phrases = num_phrases
        h = cfg.hidden_size
        self.official = cfg.layout == "official"
        self.merged = cfg.merged_attention
        self.embeddings = Embeddings(cfg, num_phrases)
        if cfg.region_box not in ("concat", "separate"):
            raise ConfigError(f"model.region_box: unknown {cfg.region_box!r} (expected 'concat' or 'separate')")
        self.region_embed = RegionEmbedding(cfg) if cfg.region_box == "separate" else nn.Linear(cfg.region_feat_dim, h)
        if self.official and cfg.region_layer_norm:
            self.region_norm = nn.LayerNorm(h, eps=cfg.region_layer_norm_eps)
        if self.merged:
            _check_merged(cfg)
            self.encoder = Encoder(cfg, cfg.text_layers + cfg.multimodal_layers)
        else:
            self.text_encoder = Encoder(cfg, cfg.text_layers)
            self.visual_encoder = Encoder(cfg, cfg.visual_layers)
            self.multimodal_encoder = Encoder(cfg, cfg.multimodal_layers)
            self.text_proj = nn.Linear(h, cfg.embed_dim, bias=False)
            self.visual_proj = nn.Linear(h, cfg.embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        self.register_buffer("tag_pieces", tag_pieces.long().clone())
        num_tag_classes = cfg.vocab_size if cfg.tag_mode == "word_pieces" else len(tag_pieces)
        self.mlm_head = TiedClassifier(cfg, cfg.vocab_size)
        self.mcr_phrase_head = TiedClassifier(cfg, max(num_phrases, 1))
        self.mcr_tag_head = TiedClassifier(cfg, max(num_tag_classes, 1))
        self.itm_head = PairClassifier(cfg, 2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    # ----- embedding tables ---------------------------------------------------------------
    @property
    def word_rows(self) -> torch.Tensor:
        return self.embeddings.word_embeddings.weight[: self.cfg.vocab_size]

    @property
    def phrase_rows(self) -> torch.Tensor:
        return self.embeddings.word_embeddings.weight[self.cfg.vocab_size :]

    def piece_mean(self, pieces: torch.Tensor) -> torch.Tensor:
        """Mean word row of 0-padded word-piece ids (..., P) -> (..., H)."""
        present = (pieces != PAD_ID).unsqueeze(-1).to(self.word_rows.dtype)
        rows = self.embeddings.word_embeddings(pieces)
        return (rows * present).sum(-2) / present.sum(-2).clamp(min=1.0)

    def tag_class_rows(self) -> torch.Tensor:
        """Candidate rows for MCR^v: tag classes (mean of pieces) or word pieces."""
        if self.cfg.tag_mode == "word_pieces":
            return self.word_rows
        return self.piece_mean(self.tag_pieces)

    # ----- encoders ---------------------------------------------------------------------
    def text_inputs(
        self,
        input_ids: torch.Tensor,
        word_mask: torch.Tensor,
        phrase_ids: torch.Tensor,
        phrase_mask: torch.Tensor,
    ) -> TextOutput:
        """The embedded textual sequence (no encoder layer, no global embedding).
        input_ids (B, N) word pieces; phrase_ids (B, M) rows of the shared table (vocab + index)."""
        b, n = input_ids.shape
        m = phrase_ids.shape[1]
        word_pos = torch.arange(n, device=input_ids.device).expand(b, n)
        # every phrase sits at the position right after its caption's [SEP]
        phrase_pos = word_mask.sum(1, keepdim=True).expand(b, m)
        if self.official:  # [CLS] words phrases [SEP]: phrases take [SEP]'s place, [SEP] moves after them
            sep = word_mask.sum(1, keepdim=True) - 1
            phrase_pos = sep + torch.arange(m, device=input_ids.device)
            word_pos = torch.where(word_pos == sep, sep + phrase_mask.sum(1, keepdim=True), word_pos)
        ids = torch.cat([input_ids, phrase_ids], 1)
        pos = torch.cat([word_pos, phrase_pos], 1)
        mask = torch.cat([word_mask, phrase_mask], 1).bool()
        x = self.embeddings(self.embeddings.word_embeddings(ids), pos, token_type=0)
        return TextOutput(x, mask, n, None)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        word_mask: torch.Tensor,
        phrase_ids: torch.Tensor,
        phrase_mask: torch.Tensor,
    ) -> TextOutput:
        """The textual encoder's outputs and global embedding (see ``text_inputs``)."""
        self._require_uni_modal("encode_text")
        inputs = self.text_inputs(input_ids, word_mask, phrase_ids, phrase_mask)
        hidden, _ = self.text_encoder(inputs.hidden, inputs.mask)
        emb = F.normalize(self.text_proj(self.pool(hidden, inputs.mask)), dim=-1)
        return TextOutput(hidden, inputs.mask, inputs.num_words, emb)

    def image_inputs(
        self,
        tag_pieces: torch.Tensor,
        tag_mask: torch.Tensor,
        region_feats: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> ImageOutput:
        """The embedded visual sequence ``[CLS] t r`` (merged: ``t r``, the text's [CLS] serves
        both); no encoder layer, no global embedding.
        tag_pieces (B, K, P) word pieces of each tag; region_feats (B, R, D)."""
        b, k = tag_mask.shape
        dev = region_feats.device
        # [CLS] (and [SEP]) as one-piece "tags", so the shared table is looked up once: each
        # lookup costs a full-size gradient of the table in the backward pass
        n_special = 0 if self.merged else 2 if self.official else 1
        special_pieces = tag_pieces.new_zeros(b, n_special, tag_pieces.shape[-1])
        if n_special:
            special_pieces[:, 0, 0] = CLS_ID
        if self.official:
            special_pieces[:, 1, 0] = SEP_ID
        concept_rows = self.piece_mean(torch.cat([special_pieces, tag_pieces], 1))
        specials = torch.ones(b, n_special, dtype=torch.long, device=dev)
        if self.official:  # [CLS] t1..tK [SEP] at consecutive positions; [SEP] is stored after [CLS]
            tag_pos = 1 + torch.arange(k, device=dev).expand(b, k)
            pos = torch.cat([0 * specials[:, :1], 1 + tag_mask.sum(1, keepdim=True), tag_pos], 1)
            regions = self.region_embed(region_feats)
            if self.cfg.region_layer_norm:
                regions = self.region_norm(regions)
            regions = self.embeddings.dropout(regions)
        else:
            pos = torch.ones(b, n_special + k, dtype=torch.long, device=dev)
            pos[:, :n_special] = 0
            regions = self.embeddings(self.region_embed(region_feats), None, token_type=1)
        concepts = self.embeddings(concept_rows, pos, token_type=1)
        x = torch.cat([concepts, regions], 1)
        mask = torch.cat([specials.bool(), tag_mask.bool(), region_mask.bool()], 1)
        return ImageOutput(x, mask, k, None, n_special)

    def encode_image(
        self,
        tag_pieces: torch.Tensor,
        tag_mask: torch.Tensor,
        region_feats: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> ImageOutput:
        """The visual encoder's outputs and global embedding (see ``image_inputs``)."""
        self._require_uni_modal("encode_image")
        inputs = self.image_inputs(tag_pieces, tag_mask, region_feats, region_mask)
        hidden, _ = self.visual_encoder(inputs.hidden, inputs.mask)
        emb = F.normalize(self.visual_proj(self.pool(hidden, inputs.mask)), dim=-1)
        return ImageOutput(hidden, inputs.mask, inputs.num_tags, emb, inputs.tag_start)

    def _require_uni_modal(self, what: str) -> None:
        if self.merged:
            raise ConfigError(f"{what}: the merged-attention model (model.merged_attention) has no uni-modal "
                              "encoders and no global embeddings; it scores an image-text pair only jointly "
                              "(fuse_batch, or ITM scores)")

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.global_pool == "cls":
            return hidden[:, 0]
        if self.cfg.global_pool == "mean":
            w = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)
        raise ConfigError(f"unknown global_pool {self.cfg.global_pool!r} (expected 'cls' or 'mean')")

    def fuse(
        self,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
        region_hidden: torch.Tensor,
        region_mask: torch.Tensor,
        keep_layers: tuple[int, ...] = (),
        *,
        stop_after: int | None = None,
        tag_hidden: torch.Tensor | None = None,
        tag_mask: torch.Tensor | None = None,
        summary_only: bool = False,
    ) -> FusedOutput:
        """Two-stream: the textual and region outputs through the multimodal encoder. Merged:
        the embedded text, tags (``tag_hidden``, required) and regions through the one encoder.
        ``summary_only``: the caller reads only the pooled summary (ITM, task heads); with [CLS]
        pooling the last layer then computes the [CLS] row alone, and ``hidden`` is (P, 1, H)."""
        if self.merged != (tag_hidden is not None):
            raise ValueError("the merged-attention model fuses text, tags and regions (give tag_hidden and "
                             "tag_mask); the two-stream model text and regions only")
        parts, masks = [text_hidden], [text_mask]
        if self.merged:
            parts.append(tag_hidden)
            masks.append(tag_mask)
        x = torch.cat([*parts, region_hidden], 1)
        mask = torch.cat([*masks, region_mask], 1).bool()
        encoder = self.encoder if self.merged else self.multimodal_encoder
        queries = 1 if summary_only and self.cfg.global_pool == "cls" else None
        hidden, layers = encoder(x, mask, keep_layers, stop_after, last_queries=queries)
        return FusedOutput(hidden, mask[:, : hidden.shape[1]], layers, text_hidden.shape[1],
                           x.shape[1] - region_hidden.shape[1])

    def fuse_outputs(self, text: TextOutput, image: ImageOutput, **kwargs) -> FusedOutput:
        """Each text with the image of its row: the region outputs (two-stream), or the
        embedded tags and regions (merged)."""
        tags = {"tag_hidden": image.tag_hidden, "tag_mask": image.tag_mask} if self.merged else {}
        return self.fuse(text.hidden, text.mask, image.region_hidden, image.region_mask, **kwargs, **tags)

    def fuse_batch(self, batch: dict) -> tuple[TextOutput, FusedOutput]:
        """A collated batch's texts and images through their encoders (merged: their embeddings),
        then each text with its image jointly (the task heads' and grounding's input)."""
        text_args = (batch["input_ids"], batch["word_mask"], batch["phrase_ids"], batch["phrase_mask"])
        image_args = (batch["tag_pieces"], batch["tag_mask"], batch["region_feats"], batch["region_mask"])
        if self.merged:
            text, image = self.text_inputs(*text_args), self.image_inputs(*image_args)
        else:
            text, image = self.encode_text(*text_args), self.encode_image(*image_args)
        return text, self.fuse_outputs(text, image)

    @property
    def wpg_depth(self) -> int:
        """The joint encoder's layer (1-based) that WPG aligns: ``wpg_layer`` of the multimodal
        encoder, or in the merged encoder the layer at the same depth of the two-stream stack."""
        return self.cfg.wpg_layer + (self.cfg.text_layers if self.merged else 0)

    # ----- heads ------------------------------------------------------------------------
    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(hidden, self.word_rows)

    def mcr_phrase_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mcr_phrase_head(hidden, self.phrase_rows)

    def mcr_tag_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mcr_tag_head(hidden, self.tag_class_rows())

    def itm_logits(self, fused: FusedOutput) -> torch.Tensor:
        return self.itm_head(self.pool(fused.hidden, fused.mask))

    @property
    def temperature(self) -> float | None:
        """The VSC temperature in use (at least 0.01, ``losses.vsc_scale``); None for the merged model,
        which has no VSC."""
        return None if self.merged else 1.0 / vsc_scale(self.logit_scale.detach()).item()


def _check_merged(cfg: ModelConfig) -> None:
    """Settings the merged encoder cannot honour are errors, not ignored."""
    if cfg.layout != "mvptr":
        raise ConfigError("model.merged_attention needs model.layout: mvptr (the official layout is for "
                          "converted two-stream checkpoints)")
    if cfg.visual_layers != cfg.text_layers:
        raise ConfigError(f"model.merged_attention: one encoder of text_layers + multimodal_layers layers "
                          f"replaces the textual and visual encoders, so model.visual_layers "
                          f"({cfg.visual_layers}) must equal model.text_layers ({cfg.text_layers})")
