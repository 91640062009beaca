"""Initialisation from a BERT-architecture checkpoint, and phrase rows from their words.

Layer placement (paper 4.1: textual and visual encoders from BERT-base layers 0-5, the
multimodal encoder from layers 6-11): textual/visual layer i <- BERT layer i, multimodal
layer i <- BERT layer L - n_mm + i, where L is the BERT depth. For a 6-layer BERT (MiniLM)
with 3+3+3 layers this is layers 0-2 for the uni-modal encoders and 3-5 for the
multimodal one; with more layers than L/2 per encoder the ranges overlap. The merged-attention
encoder (Table 4, "MergAttn") takes BERT's layers in order: its layer i <- BERT layer i.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core.config import Config, ModelConfig
from ..core.distributed import active
from ..core.errors import ConfigError, FormatError, MissingFileError
from ..model.modeling import MVPTR
from ..text.phrases import PhraseVocab, phrase_pieces
from ..text.tokenizer import WordPieces, load_tokenizer, minilm_dir, pad_lists
from .model_dir import Bundle

SHAPE_KEYS = {
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position",
    "type_vocab_size": "type_vocab_size",
}


def read_bert_dir(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a local BERT directory; keys without a ``bert.`` prefix."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MissingFileError(f"{cfg_file}: not found (expected a BERT-architecture model directory)")
    config = json.loads(cfg_file.read_text())
    if (path / "model.safetensors").exists():
        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").exists():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise MissingFileError(f"{path}: no model.safetensors or pytorch_model.bin")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    return config, state


def shape_mismatches(cfg: ModelConfig, bert_config: dict) -> list[str]:
    """What keeps a BERT of ``bert_config`` from initialising a model of ``cfg``: its sizes, and
    encoders deeper than it."""
    wrong = [f"model.{ours}={getattr(cfg, ours)} but {theirs}={bert_config[theirs]}"
             for theirs, ours in SHAPE_KEYS.items()
             if theirs in bert_config and bert_config[theirs] != getattr(cfg, ours)]
    depth = bert_config.get("num_hidden_layers", 0)
    wrong += [f"model.{name}_layers={n} but num_hidden_layers={depth}"
              for name, n in (("text", cfg.text_layers), ("visual", cfg.visual_layers),
                              ("multimodal", cfg.multimodal_layers)) if n > depth]
    return wrong


def check_shapes(cfg: ModelConfig, bert_config: dict, source: str) -> None:
    wrong = shape_mismatches(cfg, bert_config)
    if wrong:
        raise ConfigError(f"model config does not match the initialisation checkpoint {source}: " + "; ".join(wrong))


# The pre-training heads a BERT checkpoint may carry (BertForPreTraining has all four), each as
# (our parameters' prefix, the checkpoint keys that fill it); the official MVPTR code starts from them.
BERT_HEADS = (
    ("itm_head.pooler.", ("pooler.",)),
    ("itm_head.classifier.", ("cls.seq_relationship.",)),  # next sentence: their 0 = is next, our 1 = match
    ("mlm_head.transform.", ("cls.predictions.transform.",)),
    ("mlm_head.bias", ("cls.predictions.bias", "cls.predictions.decoder.bias")),
)


def _head_keys(state: dict) -> list[tuple[str, str]]:
    """(theirs, ours) for the heads ``state`` has; a bias saved twice (tied) is taken once."""
    mapping = []
    for ours, prefixes in BERT_HEADS:
        for prefix in prefixes:
            found = [(k, ours + k[len(prefix):]) for k in state if k.startswith(prefix)]
            if found:
                mapping += found
                break
    return mapping


def fresh_heads(state: dict) -> list[str]:
    """Our head parameters that ``state`` has nothing for, so they keep their random start."""
    filled = {ours for _, ours in _head_keys(state)}
    return [ours.rstrip(".") for ours, _ in BERT_HEADS if not any(f.startswith(ours) for f in filled)]


def init_from_bert(model: MVPTR, bert_config: dict, state: dict[str, torch.Tensor], source: str = "BERT") -> dict:
    """Copy embeddings, encoder layers and the heads BERT has (pooler, next-sentence classifier as
    the ITM classifier, MLM transform and bias) into ``model``; ``fresh`` names the heads it lacks."""
    cfg = model.cfg
    check_shapes(cfg, bert_config, source)
    depth = bert_config["num_hidden_layers"]
    # (theirs, ours); one BERT layer may feed two encoders
    mapping = [(k, k) for k in state if k.startswith("embeddings.") and "position_ids" not in k]
    mapping += _head_keys(state)
    for name, layers in _layer_placement(cfg, depth).items():
        if len(layers) > depth:
            raise ConfigError(f"{name} has {len(layers)} layers but {source} has only {depth}")
        for i, theirs in enumerate(layers):
            mapping += _layer_keys(state, theirs, f"{name}.layer.{i}")
    own = model.state_dict()
    with torch.no_grad():
        for theirs, ours in mapping:
            src = state[theirs]
            if ours == "embeddings.word_embeddings.weight":
                own[ours][: src.shape[0]].copy_(src)  # phrase rows after the words stay for init_phrase_rows
                continue
            if theirs.startswith("cls.seq_relationship."):
                src = src.flip(0)  # BERT's class 0 (is next) is our class 1 (matched)
            if own[ours].shape != src.shape:
                raise FormatError(f"{source}: {theirs} has shape {tuple(src.shape)}, "
                                  f"{ours} needs {tuple(own[ours].shape)}", "model directory")
            own[ours].copy_(src)
    return {"source": source, "copied": len(mapping), "bert_layers": depth, "fresh": fresh_heads(state)}


def _layer_placement(cfg: ModelConfig, depth: int) -> dict[str, list[int]]:
    """The BERT layer each of our encoders' layers starts from, in order."""
    if cfg.merged_attention:
        return {"encoder": list(range(cfg.text_layers + cfg.multimodal_layers))}
    return {
        "text_encoder": list(range(cfg.text_layers)),
        "visual_encoder": list(range(cfg.visual_layers)),
        "multimodal_encoder": list(range(depth - cfg.multimodal_layers, depth)),
    }


def _layer_keys(state: dict, bert_layer: int, ours: str) -> list[tuple[str, str]]:
    prefix = f"encoder.layer.{bert_layer}."
    return [(k, ours + "." + k[len(prefix) :]) for k in state if k.startswith(prefix)]


def init_phrase_rows(model: MVPTR, phrase_pieces: list[list[int]]) -> None:
    """Each phrase row = the mean of the word rows of its words' pieces (paper 3.1.1)."""
    if len(phrase_pieces) != model.num_phrases:
        raise ValueError(f"{len(phrase_pieces)} phrases given, model has {model.num_phrases}")
    if not phrase_pieces:
        return
    width = max(len(p) for p in phrase_pieces)
    ids = torch.zeros(len(phrase_pieces), width, dtype=torch.long)
    for i, p in enumerate(phrase_pieces):
        ids[i, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        model.phrase_rows.copy_(model.piece_mean(ids))


INIT_HINT = ("pass init.source=DIR, a local BERT directory of the model's size (bert-base-uncased for the "
             "base preset: config.json, model.safetensors or pytorch_model.bin, vocab.txt), or init.source=random")
def init_dir(cfg: Config, source: str | None = None) -> Path | None:
    """The BERT directory ``init.source`` names (None for "random"), checked before any data is
    read: one that is missing or does not fit the model is a ConfigError saying what to pass."""
    source = source or cfg.init.source
    if source == "random":
        return None
    path = minilm_dir() if source == "minilm" else Path(source)
    if not (path / "config.json").is_file() or not any((path / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise ConfigError(f"init.source={source}: not a BERT directory with config.json and a vocabulary; {INIT_HINT}")
    wrong = shape_mismatches(cfg.model, json.loads((path / "config.json").read_text()))
    if wrong:
        name = "the packaged MiniLM-L6" if source == "minilm" else str(path)
        raise ConfigError(f"init.source={source}: {name} does not fit the model ({'; '.join(wrong)}); {INIT_HINT}")
    return path
def new_bundle(cfg: Config, phrase_vocab: PhraseVocab, tag_vocab: list[str], source: str | None = None) -> Bundle:
    """A model initialised from ``source``: "minilm", "random" or a local BERT directory."""
    bert_dir = init_dir(cfg, source)
    tokenizer = load_tokenizer(None if bert_dir is None else bert_dir)
    pieces = WordPieces(tokenizer, cfg.data.max_tokens)
    tag_pieces = pad_lists([list(pieces.pieces(t)) for t in tag_vocab], 0)
    torch.manual_seed(cfg.seed)
    model = MVPTR(cfg.model, len(phrase_vocab), tag_pieces)
    if bert_dir is not None:
        bert_config, state = read_bert_dir(bert_dir)
        report = init_from_bert(model, bert_config, state, str(bert_dir))
        if report["fresh"] and active().main:
            print(f"init: {bert_dir} has no weights for {', '.join(report['fresh'])}; they start from random",
                  file=sys.stderr, flush=True)
    init_phrase_rows(model, phrase_pieces(phrase_vocab, pieces))
    inputs = {"use_tags": cfg.objectives.use_tags, "use_phrases": cfg.objectives.use_phrases}
    return Bundle(model.to(cfg.device), tokenizer, phrase_vocab, tag_vocab, inputs)
