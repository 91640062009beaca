"""Official MVPTR checkpoints (an HF-style ``pytorch_model.bin`` + ``config.json`` +
``id2phrase_new.json``) converted to model directories through an explicit key map."""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.config import ModelConfig
from ..core.errors import FormatError, MissingFileError
from ..core.fileio import load_json
from ..model.modeling import MVPTR
from ..text.phrases import PhraseVocab, phrase_string
from ..text.tokenizer import load_tokenizer
from .model_dir import Bundle, load_state_strict, load_weights, save_model_dir, weights_file

# The released code's names (an HF-style BERT with three half-depth encoders), ours on the right.
OFFICIAL_PREFIXES = (
    ("bert.embeddings.", "embeddings."),
    ("bert.txt_encoder.", "text_encoder."),
    ("bert.vis_encoder.", "visual_encoder."),
    ("bert.mul_encoder.", "multimodal_encoder."),
    ("bert.pooler.", "itm_head.pooler."),
    ("bert.img_embedding.", "region_embed."),
    ("bert.LayerNorm.", "region_norm."),
    ("cls.predictions.transform.", "mlm_head.transform."),
    ("half_mlm.transform.", "mcr_tag_head.transform."),
    ("cls.seq_relationship.", "itm_head.classifier."),
)
OFFICIAL_RENAMES = {
    "cls.predictions.bias": "mlm_head.bias",
    "half_mlm.bias": "mcr_tag_head.bias",
    "logit_scale": "logit_scale",
}
OFFICIAL_WORD_ROWS = 30522
# the input limits of the released pre-training (paper 4.1: 35 tokens, 5 phrases, 50 regions, 20 tags),
# recorded in the converted directory so that it loads with them and no config
OFFICIAL_LIMITS = {"max_tokens": 35, "max_phrases": 5, "max_tags": 20, "max_regions": 50}


def official_phrase_string(words) -> str:
    """An ``id2phrase_new.json`` tuple as our phrase string: (object, attribute) -> "attribute
    object", (subject, relation, object) -> joined; a one-word concept is the word."""
    words = [str(w) for w in words]
    return phrase_string(words) if len(words) in (2, 3) else " ".join(words)


def official_phrase_rows(id2phrase: dict, vocab_size: int = OFFICIAL_WORD_ROWS) -> tuple[list[int], list[str]]:
    """Table rows and strings of our phrases, in our order: the official phrase rows (ids from
    ``vocab_size`` up), then the one-word concepts that reuse word rows. A string met twice keeps
    its first id."""
    ids = sorted(int(k) for k in id2phrase)
    ordered = [i for i in ids if i >= vocab_size] + [i for i in ids if i < vocab_size]
    rows, names, seen = [], [], set()
    for i in ordered:
        name = official_phrase_string(id2phrase[str(i)])
        if name and name not in seen:
            seen.add(name)
            rows.append(i)
            names.append(name)
    return rows, names


def _official_layers(state: dict, prefix: str) -> int:
    layers = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    if layers != set(range(len(layers))) or not layers:
        raise FormatError(f"no complete {prefix}N.* layers in the checkpoint (found {sorted(layers)})",
                          "model directory")
    return len(layers)


def official_model_config(bert_config: dict, state: dict) -> ModelConfig:
    text = _official_layers(state, "bert.txt_encoder.layer.")
    hidden = bert_config["hidden_size"]
    return ModelConfig(
        hidden_size=hidden,
        num_heads=bert_config["num_attention_heads"],
        intermediate_size=bert_config["intermediate_size"],
        text_layers=text,
        visual_layers=_official_layers(state, "bert.vis_encoder.layer."),
        multimodal_layers=_official_layers(state, "bert.mul_encoder.layer."),
        vocab_size=int(bert_config.get("only_word_size", OFFICIAL_WORD_ROWS)),
        max_position=bert_config.get("max_position_embeddings", 512),
        type_vocab_size=bert_config.get("type_vocab_size", 2),
        dropout=bert_config.get("hidden_dropout_prob", 0.1),
        attention_dropout=bert_config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=bert_config.get("layer_norm_eps", 1e-12),
        region_feat_dim=state["bert.img_embedding.weight"].shape[1],
        embed_dim=state["bert.txt_proj"].shape[1],
        temperature=float(torch.exp(-state["logit_scale"].float())) if "logit_scale" in state else 0.07,
        global_pool="cls",
        wpg_layer=_official_layers(state, "bert.mul_encoder.layer."),  # official WPG: last layer
        tag_mode="word_pieces",
        layout="official",
        region_layer_norm="bert.LayerNorm.weight" in state,
        region_layer_norm_eps=bert_config.get("img_layer_norm_eps", 1e-12),
    )


def convert_official(src_dir: str | Path, out_dir: str | Path, trust_pickle: bool = False) -> dict:
    """An official MVPTR checkpoint directory (``config.json``, ``pytorch_model.bin`` or
    ``model.safetensors``, ``id2phrase_new.json``; tokenizer files optional) as our model
    directory in the official layout. Returns what was copied, left out and newly initialised."""
    src = Path(src_dir)
    for name in ("config.json", "id2phrase_new.json"):
        if not (src / name).exists():
            raise MissingFileError(f"{src / name}: not found (an official MVPTR checkpoint has config.json, "
                                   "pytorch_model.bin and id2phrase_new.json)")
    weights = weights_file(src)
    theirs = {k.removeprefix("module."): v for k, v in load_weights(weights, trust_pickle).items()}
    for key in ("bert.embeddings.word_embeddings.weight", "bert.img_embedding.weight", "bert.txt_proj"):
        if key not in theirs:
            raise FormatError(f"{weights}: no {key}; not an official MVPTR checkpoint", "model directory")
    cfg = official_model_config(load_json(src / "config.json"), theirs)

    table = theirs["bert.embeddings.word_embeddings.weight"]
    id2phrase = load_json(src / "id2phrase_new.json")
    rows, names = official_phrase_rows(id2phrase, cfg.vocab_size)
    if rows and max(rows) >= len(table):
        raise FormatError(f"{src / 'id2phrase_new.json'}: names phrase id {max(rows)}, the embedding table of "
                          f"{weights} has {len(table)} rows", "model directory")
    phrase_vocab = PhraseVocab({n: len(names) - i for i, n in enumerate(names)}, min_count=1)

    torch.manual_seed(0)
    model = MVPTR(cfg, len(names), torch.zeros(0, 1, dtype=torch.long))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    filled, unused = set(), []
    for key, value in theirs.items():
        ours = OFFICIAL_RENAMES.get(key) or next(
            (new + key[len(old):] for old, new in OFFICIAL_PREFIXES if key.startswith(old)), None)
        if key == "bert.embeddings.word_embeddings.weight":
            state["embeddings.word_embeddings.weight"] = torch.cat([value[: cfg.vocab_size], value[rows]])
            filled.add("embeddings.word_embeddings.weight")
        elif key in ("bert.txt_proj", "bert.vis_proj"):  # applied as x @ W; ours is Linear (x @ W.T)
            ours = "text_proj.weight" if key == "bert.txt_proj" else "visual_proj.weight"
            state[ours] = value.t().contiguous()
            filled.add(ours)
        elif ours is not None and ours in state:
            if key.startswith("cls.seq_relationship."):
                value = value.flip(0)  # their label 0 = match; ours 1 = match
            if value.shape != state[ours].shape:
                raise FormatError(f"{weights}: {key} has shape {tuple(value.shape)}, "
                                  f"{ours} needs {tuple(state[ours].shape)}", "model directory")
            state[ours] = value.clone()
            filled.add(ours)
        else:
            unused.append(key)  # tied decoders, position_ids, fine-tuned or QA heads
    load_state_strict(model, state, str(weights))
    tokenizer = load_tokenizer(src if any((src / n).exists() for n in ("vocab.txt", "tokenizer.json")) else None)
    # the released model reads tags and phrases
    save_model_dir(out_dir, Bundle(model, tokenizer, phrase_vocab, [], {"use_tags": True, "use_phrases": True},
                                   dict(OFFICIAL_LIMITS)))
    return {
        "source": str(weights),
        "copied": len(filled),
        "initialised": sorted(set(state) - filled - {"tag_pieces"}),
        "not_converted": sorted(unused),
        "phrases": len(names),
        "phrase_ids_dropped": len(id2phrase) - len(names),
        "layers": [cfg.text_layers, cfg.visual_layers, cfg.multimodal_layers],
        "region_layer_norm": cfg.region_layer_norm,
    }
