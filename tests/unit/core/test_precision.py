"""Compiled bf16 training computes the losses of eager fp32 training, to bf16's precision."""

import pytest
import torch
from torch.utils.data import DataLoader

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.core.config import load_config
from mvptr.core.precision import autocast
from mvptr.data.builders import collator, training_tag_vocab
from mvptr.data.pretrain import build_pair_dataset
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces
from mvptr.train.objectives import stage_masking
from mvptr.train.recipes import pretraining_recipe

pytestmark = pytest.mark.slow

# bf16 keeps 8 significant bits (relative rounding 2^-8); a loss computed through a few layers of
# bf16 products carries a few such roundings, so 8 units of it bounds the difference from fp32
BF16_LOSS_RTOL = 8 * 2.0**-8


def losses(cfg, bundle, batch, precision):
    recipe = pretraining_recipe("stage2", list(cfg.stage2.objectives), cfg.objectives)
    with autocast("cpu", precision):
        out = recipe.loss(bundle.model, batch, torch.Generator().manual_seed(0))
    return {k: v.item() for k, v in out.items()}


def test_compiled_bf16_losses_match_eager_fp32(world_args, tmp_path):
    results = {}
    for backend in ("none", "inductor"):
        cfg = load_config("tiny", world_args(tmp_path) + [f"model.compile={backend}"])
        bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
        dataset = build_pair_dataset(cfg.data, WordPieces(bundle.tokenizer, cfg.data.max_tokens),
                                     bundle.phrase_vocab, cfg.model.region_feat_dim, "train")
        masking = stage_masking(cfg.objectives, list(cfg.stage2.objectives))
        batch = next(iter(DataLoader(dataset, batch_size=16, collate_fn=collator(cfg, bundle, masking))))
        bundle.model.train()
        for precision in ("fp32", "bf16") if backend == "none" else ("bf16",):  # one compilation
            results[backend, precision] = losses(cfg, bundle, batch, precision)
    reference = results["none", "fp32"]
    assert set(reference) == {"mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"}
    for run in (("none", "bf16"), ("inductor", "bf16")):
        for name, value in results[run].items():
            assert abs(value - reference[name]) <= BF16_LOSS_RTOL * max(1.0, abs(reference[name])), (run, name)
