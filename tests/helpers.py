"""Helpers that several test files share: a small corpus in the real formats, and the
subprocess, torchrun and short-training helpers of the multi-process tests."""

import json
import os
import subprocess
import sys

import numpy as np

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.core.config import load_config
from mvptr.data.builders import collator, training_tag_vocab
from mvptr.data.pretrain import build_pair_dataset
from mvptr.formats.captions import write_karpathy_json
from mvptr.formats.phrase_cache import ParsedCaption, write_phrase_cache
from mvptr.formats.vinvl import write_vinvl_features, write_vinvl_predictions
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces
from mvptr.train.recipes import Recipe
from mvptr.train.trainer import train

DIM = 134  # configs/tiny.yaml's region_feat_dim
IDS = [str(i) for i in range(1, 9)]
VOCAB = PhraseVocab({"red circle": 16}, 1)


def _prediction(n, w=100, h=80):
    return {"image_h": h, "image_w": w, "num_boxes": n,
            "objects": [{"rect": [k, k, k + 10, k + 12], "class": "circle", "conf": 0.9} for k in range(n)]}


def captions_of(image_id):
    return [f"a red circle number {image_id}", f"two circles number {image_id}"]


def parsed(caption, tuples):
    """A caption's tuples with spans found by text: each word of a tuple at the first place the
    caption holds it (a prefix: "circle" in "circles"), else the whole caption."""
    def where(word):
        at = caption.lower().find(word)
        return (at, at + len(word)) if at >= 0 else (0, len(caption))

    return ParsedCaption([tuple(t) for t in tuples],
                         [tuple(dict.fromkeys(where(w) for word in t for w in word.split())) for t in tuples])


def phrase_records(ids):
    """Phrase cache records of the captions of ``ids`` (keyed by caption text)."""
    return [(c, parsed(c, [("circle", "red")])) for i in ids for c in captions_of(i)]


def write_corpus(root, ids=IDS, regions=3):
    """Two captions per image, features, predictions and phrase cache, in the real formats."""
    root.mkdir(parents=True, exist_ok=True)
    write_karpathy_json(root / "captions.json", [
        {"filename": f"{i}.png", "imgid": k, "split": "train", "sentences": captions_of(i)}
        for k, i in enumerate(ids)])
    rng = np.random.default_rng(0)
    write_vinvl_features(root / "features.tsv", [(i, rng.random((regions, DIM), dtype=np.float32)) for i in ids])
    write_vinvl_predictions(root / "predictions.tsv", [(i, _prediction(regions)) for i in ids])
    write_phrase_cache(root / "phrase_cache.jsonl", phrase_records(ids))
    return root


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _torchrun(n, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(port),
            "-m", "mvptr"]


def _setup(world_args, out, *extra):
    cfg = load_config("tiny", world_args(out) + ["model.dropout=0.1", *extra])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    data = build_pair_dataset(cfg.data, WordPieces(bundle.tokenizer, cfg.data.max_tokens), bundle.phrase_vocab,
                              cfg.model.region_feat_dim, cfg.data.train_split)
    return cfg, bundle, data


def _per_sample_recipe(nan_at_step=None):
    """A loss that is a mean over samples, so accumulation must not change the gradient."""
    calls = {"n": 0}

    def loss(model, batch, generator):
        calls["n"] += 1
        text = model.encode_text(batch["input_ids"], batch["word_mask"], batch["phrase_ids"], batch["phrase_mask"])
        value = (text.global_emb[:, 0] - 0.5).pow(2).mean()
        if nan_at_step is not None and calls["n"] == nan_at_step:
            value = value * float("nan")
        return {"fit": value}

    return Recipe("per_sample", loss)


def _train(cfg, bundle, data, out, recipe=None, **stage):
    st = cfg.stage1.__class__(**{**cfg.stage1.__dict__, "max_steps": 3, "batch_size": 16, "lr": 1e-3, **stage})
    return train(bundle, recipe or _per_sample_recipe(), data, collator(cfg, bundle), st, out, progress=False)
