"""Figures: each writes a readable PNG; grounding picks what the evaluation picks; the
recomputed attention is the encoders' own."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import save_model_dir
from mvptr.cli.visualize import add_parser as add_visualize_parser
from mvptr.core.config import load_config
from mvptr.data.builders import collator, image_source, phrase_lookup, training_tag_vocab
from mvptr.data.grounding import grounding_examples
from mvptr.eval import grounding
from mvptr.formats.captions import read_captions
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces
from mvptr.viz.attention import attention_probs, last_layer_attention, last_layer_inputs, plot_attention
from mvptr.viz.common import FIGURES
from mvptr.viz.concepts import plot_concepts
from mvptr.viz.curves import plot_training_curves, read_metrics
from mvptr.viz.figures import make_demo_figures
from mvptr.viz.grounding import first_grounding_sentence, plot_grounding

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(world_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("viz")
    cfg = load_config("tiny", world_args(out))
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    bundle.model.eval()
    return cfg, bundle, out


def assert_png(path, min_width=400, min_height=250):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000, f"{path}: only {path.stat().st_size} bytes"
    with Image.open(path) as im:
        assert im.width >= min_width and im.height >= min_height, im.size


def write_metrics(path, stage, steps, losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for step in steps:
            row = {"stage": stage, "step": step, "lr": 1e-4}
            row.update({k: 5.0 / step + i for i, k in enumerate(losses)})
            row["loss"] = sum(row[k] for k in losses)
            f.write(json.dumps(row) + "\n")


STAGE1 = ["mcr_v", "mcr_s", "vsc"]
STAGE2 = STAGE1 + ["mlm", "itm", "wpg"]


def test_training_curves_continue_the_step_count_across_stages(tmp_path):
    write_metrics(tmp_path / "stage1" / "metrics.jsonl", "stage1", range(1, 13), STAGE1)
    write_metrics(tmp_path / "stage2" / "metrics.jsonl", "stage2", range(1, 9), STAGE2)
    with open(tmp_path / "stage2" / "metrics.jsonl", "a") as f:  # a resumed run logs step 8 again
        f.write(json.dumps({"stage": "stage2", "step": 8, "loss": 1.5, "mlm": 0.5}) + "\n")
        f.write('{"stage": "stage2", "st')  # and a line cut off mid-write
    files = [tmp_path / "stage1" / "metrics.jsonl", tmp_path / "stage2" / "metrics.jsonl"]
    rows = read_metrics(files)
    assert [r["global_step"] for r in rows] == list(range(1, 21))
    assert rows[-1]["stage"] == "stage2" and rows[-1]["loss"] == 1.5
    assert_png(plot_training_curves(files, tmp_path / "curves.png"), min_width=1000)


def test_grounding_picks_the_region_that_evaluate_grounding_picks(setup, tmp_path, monkeypatch):
    cfg, bundle, _ = setup
    image_id, sentence = first_grounding_sentence(bundle, cfg)
    path, chosen = plot_grounding(bundle, cfg, image_id, sentence, tmp_path / "grounding.png")
    assert_png(path)

    lookup = phrase_lookup(cfg, bundle.phrase_vocab, cfg.eval.split)
    examples = grounding_examples(cfg.eval.entities_dir, [image_id], bundle.tokenizer, cfg.data.max_tokens,
                                            lookup)
    example = next(ex for ex in examples if ex["sentence_index"] == sentence)
    assert len(chosen) == len(example["mentions"]) > 0
    images, collate = image_source(cfg), collator(cfg, bundle)
    n_regions = len(images(image_id)["boxes"])
    for mention, pick in zip(example["mentions"], chosen):
        # evaluate_grounding scores a mention by the box_iou row of the region it chose:
        # let only region r overlap, and the accuracy says whether r was the choice
        picked_by_eval = []
        for r in range(n_regions):
            monkeypatch.setattr(grounding, "box_iou", lambda det, gt, r=r: np.eye(len(det))[:, [r]])
            result = grounding.evaluate_grounding(bundle.model, [{**example, "mentions": [mention]}], images, collate)
            if result["acc"] == 100.0:
                picked_by_eval.append(r)
        assert picked_by_eval == [pick]


def padded_batch(cfg, bundle, n=8):
    records = read_captions(cfg.data.captions, splits=[cfg.eval.split])[: 5 * n : 5]  # different images
    images = image_source(cfg)
    pieces = WordPieces(bundle.tokenizer, cfg.data.max_tokens)
    lookup = phrase_lookup(cfg, bundle.phrase_vocab, cfg.eval.split)
    items = [{"input_ids": ids, "phrases": lookup(r.image_id, r.caption), **images(r.image_id)}
             for r, ids in zip(records, pieces.captions([r.caption for r in records]))]
    return collator(cfg, bundle)(items)


def test_recomputed_attention_sums_to_one_over_valid_keys_and_is_the_encoders_own(setup):
    cfg, bundle, _ = setup
    model = bundle.model
    batch = padded_batch(cfg, bundle)
    att = last_layer_attention(model, batch)
    for probs, mask in ((att["text"], att["text_mask"]), (att["visual"], att["visual_mask"])):
        assert (~mask).any(), "the batch should have padded keys"
        keys = mask[:, None, :].expand_as(probs)
        assert torch.allclose((probs * keys).sum(-1), torch.ones(probs.shape[:2]), atol=1e-5)
        assert torch.all(probs[~keys] == 0)

    # the recomputed probabilities, applied to the values, give the fused attention's output
    with torch.no_grad():
        for encoder, run in (
            (model.text_encoder, lambda: model.encode_text(batch["input_ids"], batch["word_mask"],
                                                           batch["phrase_ids"], batch["phrase_mask"])),
            (model.visual_encoder, lambda: model.encode_image(batch["tag_pieces"], batch["tag_mask"],
                                                              batch["region_feats"], batch["region_mask"])),
        ):
            _, x, mask = last_layer_inputs(encoder, run)
            sa = encoder.layer[-1].attention.self
            heads = attention_probs(sa, x, mask, average=False)
            mixed = (heads @ sa._heads(sa.value(x))).transpose(1, 2).reshape(x.shape)
            assert torch.allclose(mixed, sa(x, mask), atol=1e-5)


def test_attention_and_concept_figures(setup, tmp_path):
    cfg, bundle, _ = setup
    image_id, sentence = first_grounding_sentence(bundle, cfg)
    assert_png(plot_attention(bundle, cfg, image_id, sentence, tmp_path / "attention.png"), min_width=1000)
    assert_png(plot_concepts(bundle, tmp_path / "concepts.png", max_points=50))


def test_demo_figures_and_the_visualize_command(setup, world_args, tmp_path, capsys):
    cfg, bundle, out = setup
    write_metrics(out / "stage1" / "metrics.jsonl", "stage1", range(1, 6), STAGE1)
    write_metrics(out / "stage2" / "metrics.jsonl", "stage2", range(1, 6), STAGE2)
    figures = make_demo_figures(cfg, bundle, tmp_path / "figures")
    assert sorted(figures) == sorted(FIGURES)
    for path in figures.values():
        assert_png(path)

    model_dir = save_model_dir(tmp_path / "model", bundle)
    parser = argparse.ArgumentParser(prog="mvptr")
    add_visualize_parser(parser.add_subparsers(dest="command", required=True))
    for figure in FIGURES:
        png = tmp_path / "cli" / f"{figure}.png"
        model = [] if figure == "curves" else ["--model", str(model_dir)]
        args = parser.parse_args(["visualize", figure, *model, "--config", "tiny", "--out", str(png),
                                  *world_args(out)])
        args.func(args)
        assert_png(png)
        assert str(png) in capsys.readouterr().out
