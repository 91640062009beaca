"""The merged-attention model (Table 4, "MergAttn"): one encoder over {w, c, t, r}, trained
with MCR^v + MCR^s + WPG + MLM + ITM, initialised from BERT's layers in order, and evaluated
by ITM over every image-caption pair."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import BertModel

import mvptr.eval.retrieval as retrieval
import mvptr.workflows.pretrain as pretrain_workflow
from mvptr.checkpoint.bert_init import init_from_bert, new_bundle, read_bert_dir
from mvptr.checkpoint.model_dir import load_model_dir, save_model_dir
from mvptr.cli import main
from mvptr.core.config import ObjectiveConfig, load_config
from mvptr.core.errors import ConfigError
from mvptr.data.builders import training_tag_vocab
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.model.modeling import MVPTR
from mvptr.tasks import task_recipe
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces, load_tokenizer, minilm_dir
from mvptr.train.recipes import pretraining_recipe
from mvptr.train.trainer import param_groups
from mvptr.workflows.evaluate import evaluate

MERGED = ["model.merged_attention=true", "objectives.vsc=false"]
ALL = ["mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"]
TAGS = ["circle", "square", "triangle", "red ball"]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: small ops on a shared, busy CPU are many times slower with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(*overrides) -> MVPTR:
    cfg = load_config("tiny", [*MERGED, *overrides]).model
    torch.manual_seed(0)
    return MVPTR(cfg, num_phrases=6, tag_pieces=torch.tensor([[4418, 0], [2675, 0], [9546, 0], [2417, 3608]]))


def fixed_batch(model: MVPTR) -> dict:
    """Eight captions of four images, with words, phrases and tags masked for their objectives."""
    tok = load_tokenizer()
    gen = torch.Generator().manual_seed(0)
    collate = Collator(WordPieces(tok, 24), TAGS, model.num_phrases, model.cfg.vocab_size,
                       CollateSettings(masking=Masking(words=0.15, phrases=0.25, tags=0.25)), generator=gen)
    captions = ["a red circle left of a blue square", "two green triangles", "a big square above a small circle",
                "a red ball", "a blue circle", "three squares and a triangle", "a small red triangle", "one circle"]
    rng = np.random.default_rng(0)
    items = [{"input_ids": tok(c)["input_ids"], "phrases": [i % 6, (i + 1) % 6],
              "region_feats": rng.normal(size=(5, 134)).astype(np.float32),
              "boxes": rng.uniform(0, 96, size=(5, 4)).astype(np.float32),
              "tags": [TAGS[i % 4], TAGS[(i + 1) % 4], TAGS[(i + 2) % 4]], "width": 96, "height": 96,
              "image_index": i // 2} for i, c in enumerate(captions)]
    batch = collate(items)
    for labels in ("mlm_labels", "phrase_labels", "tag_labels"):  # every objective has something to recover
        assert (batch[labels] != -100).any(), labels
    return batch


def test_one_encoder_of_text_plus_multimodal_layers_and_no_uni_modal_encoders():
    model = tiny_model()
    cfg = model.cfg
    assert len(model.encoder.layer) == cfg.text_layers + cfg.multimodal_layers == 4
    for name in ("text_encoder", "visual_encoder", "multimodal_encoder", "text_proj", "visual_proj", "logit_scale"):
        assert not hasattr(model, name), name
    assert {k.split(".")[0] for k in model.state_dict()} == {
        "embeddings", "region_embed", "encoder", "mlm_head", "mcr_phrase_head", "mcr_tag_head", "itm_head",
        "tag_pieces"}
    assert model.temperature is None
    with pytest.raises(ConfigError, match="no uni-modal"):
        model.encode_text(torch.tensor([[101, 102]]), torch.ones(1, 2, dtype=torch.bool),
                          torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    # base size: 6 + 6 = 12 layers
    with torch.device("meta"):  # shapes only
        base = MVPTR(load_config("base", MERGED).model, 1, torch.zeros(1, 1, dtype=torch.long))
    assert len(base.encoder.layer) == 12


def test_the_joint_sequence_holds_words_phrases_tags_and_regions():
    model = tiny_model().eval()
    batch = fixed_batch(model)
    text, fused = model.fuse_batch(batch)
    b, n_words = batch["input_ids"].shape
    m, k, r = batch["phrase_ids"].shape[1], batch["tag_mask"].shape[1], batch["region_feats"].shape[1]
    assert fused.hidden.shape[:2] == (b, n_words + m + k + r)
    assert fused.tag_hidden.shape[1] == k and fused.region_hidden.shape[1] == r
    assert torch.equal(fused.region_mask, batch["region_mask"])
    # a tag changes the words' outputs: words attend to tags in the one encoder
    other = dict(batch, tag_pieces=batch["tag_pieces"].flip(0))
    _, fused2 = model.fuse_batch(other)
    assert not torch.allclose(fused.hidden[:, :n_words], fused2.hidden[:, :n_words])


@pytest.mark.slow
def test_all_objectives_give_finite_losses_that_fall_on_a_fixed_batch():
    model = tiny_model()
    batch = fixed_batch(model)
    obj = load_config("tiny", MERGED).objectives
    recipe = pretraining_recipe("stage2", ALL, obj, merged=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        losses = recipe.loss(model, batch, torch.Generator().manual_seed(1))  # the same negatives each step
        assert set(losses) == {"mcr_v", "mcr_s", "mlm", "itm", "wpg"}
        assert all(torch.isfinite(v) for v in losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    first, last = history[0], history[-1]
    for name in ("mcr_v", "mcr_s", "mlm", "itm"):
        assert last[name] < 0.8 * first[name], (name, first[name], last[name])
    assert first["wpg"] > 0 and last["wpg"] < first["wpg"]


def test_negatives_are_drawn_uniformly_from_other_images():
    model = tiny_model()
    batch = fixed_batch(model)
    seen = []
    original = model.fuse

    def spy(*args, **kwargs):
        seen.append(args[0].shape[0])
        return original(*args, **kwargs)

    model.fuse = spy
    obj = ObjectiveConfig(vsc=False, itm_negatives="both")
    pretraining_recipe("stage2", ["itm"], obj, merged=True).loss(model, batch, torch.Generator().manual_seed(0))
    assert seen == [3 * 8]  # positives, a negative image per text and a negative text per image, one pass
    from mvptr.model import losses as L

    same = batch["image_index"][:, None] == batch["image_index"][None, :]
    counts = torch.zeros(8, 8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx, ok = L.sample_negatives(torch.zeros(8, 8), same, "sampled", gen)
        counts[torch.arange(8), idx] += 1
    assert counts[same].sum() == 0  # never the image's own captions
    # 6 admissible images per text, each drawn 100 times in expectation (sd 9)
    assert counts[~same].min() > 60 and counts[~same].max() < 140


def test_vsc_or_hardest_negatives_with_merged_attention_are_config_errors():
    with pytest.raises(ConfigError, match="objectives.vsc=false"):
        pretraining_recipe("stage2", ALL, ObjectiveConfig(), merged=True)
    with pytest.raises(ConfigError, match="negative_sampling"):
        pretraining_recipe("stage2", ["itm"], ObjectiveConfig(vsc=False, negative_sampling="hardest"), merged=True)
    with pytest.raises(ConfigError, match="visual_layers"):
        tiny_model("model.visual_layers=3")
    with pytest.raises(ConfigError, match="layout"):
        tiny_model("model.layout=official")
    # retrieval fine-tuning of a merged model trains ITM alone (there is no VSC to train)
    cfg = load_config("tiny", MERGED)
    model = tiny_model()
    losses = task_recipe("retrieval", cfg, merged=True).loss(model, fixed_batch(model), torch.Generator())
    assert set(losses) == {"itm"}


def test_the_demo_refuses_the_merged_model(capsys):
    assert main(["demo", "--config", "tiny", *MERGED]) == 2
    assert "merged-attention" in capsys.readouterr().err


def test_the_heads_only_cross_modal_objectives_reach_rest_in_stage1_and_take_the_lr_scale_in_stage2():
    """Its ITM and MLM heads are what only the cross-modal objectives reach: stage 1 (MCR) leaves
    them out of the optimizer, ``cross_modal_lr_scale`` multiplies their learning rate and no other."""
    model = tiny_model()
    names = {id(p): n for n, p in model.named_parameters()}
    heads = {n for n in names.values() if n.startswith(("itm_head.", "mlm_head."))}
    assert heads and {n.split(".")[0] for n in heads} == {"itm_head", "mlm_head"}
    obj = ObjectiveConfig(vsc=False)
    stage1 = pretraining_recipe("stage1", ["mcr_v", "mcr_s", "vsc"], obj, merged=True, cross_modal_lr_scale=5.0,
                                negative_warmup_steps=50)  # a warm-up of uniform negatives: accepted
    trained = {names[id(p)] for g in param_groups(model, stage1.trainable, 0.01, 1e-3, stage1.lr_scale)
               for p in g["params"]}
    assert trained == set(names.values()) - heads
    stage2 = pretraining_recipe("stage2", ALL, obj, merged=True, cross_modal_lr_scale=5.0, negative_warmup_steps=50)
    lr = {names[id(p)]: g["lr"] for g in param_groups(model, stage2.trainable, 0.01, 1e-3, stage2.lr_scale)
          for p in g["params"]}
    assert set(lr) == set(names.values())
    assert {n for n, r in lr.items() if r == pytest.approx(5e-3)} == heads
    assert all(r == pytest.approx(1e-3) for n, r in lr.items() if n not in heads)


@pytest.mark.slow
def test_bert_layers_initialise_the_merged_encoder_in_order():
    cfg = load_config("demo", MERGED).model
    bert_config, state = read_bert_dir(minilm_dir())
    model = MVPTR(cfg, num_phrases=0, tag_pieces=torch.zeros(0, 1, dtype=torch.long))
    init_from_bert(model, bert_config, state, "minilm")
    assert len(model.encoder.layer) == bert_config["num_hidden_layers"] == 6
    for i, layer in enumerate(model.encoder.layer):
        for name, weight in layer.state_dict().items():
            assert torch.equal(weight, state[f"encoder.layer.{i}.{name}"]), (i, name)
    # a caption alone through the merged encoder is MiniLM's last layer
    tok = load_tokenizer()
    enc = tok(["a big red circle above a small blue triangle", "two shapes"], padding=True, return_tensors="pt")
    mask = enc["attention_mask"].bool()
    none = torch.zeros(2, 0, dtype=torch.bool)
    with torch.no_grad():
        text = model.eval().text_inputs(enc["input_ids"], mask, torch.zeros(2, 0, dtype=torch.long), none)
        fused = model.fuse(text.hidden, text.mask, torch.zeros(2, 0, cfg.hidden_size), none,
                           tag_hidden=torch.zeros(2, 0, cfg.hidden_size), tag_mask=none)
        expected = BertModel.from_pretrained(str(minilm_dir())).eval()(**enc).last_hidden_state
    assert torch.allclose(fused.hidden[mask], expected[mask], atol=1e-5)
    # more layers than the source has is an error
    deep = load_config("demo", [*MERGED, "model.text_layers=4", "model.visual_layers=4"]).model
    with pytest.raises(ValueError, match="7 layers but minilm has only 6"):
        init_from_bert(MVPTR(deep, 0, torch.zeros(0, 1, dtype=torch.long)), bert_config, state, "minilm")


def test_a_saved_merged_model_reloads_as_merged(tmp_path):
    model = tiny_model()
    from mvptr.checkpoint.model_dir import Bundle

    save_model_dir(tmp_path / "m", Bundle(model, load_tokenizer(), PhraseVocab({f"p{i}": 9 for i in range(6)}, 1),
                                          TAGS))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["merged_attention"] is True
    loaded = load_model_dir(tmp_path / "m").model
    assert loaded.merged and len(loaded.encoder.layer) == 4 and not hasattr(loaded, "text_encoder")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def merged_bundle(world_args, tmp_path_factory):
    cfg = load_config("tiny", [*world_args(tmp_path_factory.mktemp("merged")), *MERGED])
    return cfg, new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))


def test_retrieval_scores_every_pair_of_the_subset_by_itm(merged_bundle, monkeypatch):
    cfg, bundle = merged_bundle
    cfg = replace(cfg, eval=replace(cfg.eval, max_images=5))
    rows = []
    itm_logits = bundle.model.itm_logits
    monkeypatch.setattr(bundle.model, "itm_logits", lambda fused: rows.append(len(fused.hidden)) or itm_logits(fused))
    result = evaluate(cfg, bundle, progress=False)
    assert result["images"] == 5 and result["captions"] == 25
    assert result["retrieval"]["pairs_scored"] == sum(rows) == 5 * 25
    assert set(result["retrieval"]) == {"itm", "pairs_scored"}
    assert 0 <= result["retrieval"]["itm"]["i2t_r1"] <= 100 and 0 <= result["grounding"]["acc"] <= 100


def test_every_pair_of_a_large_set_needs_a_subset(merged_bundle, monkeypatch):
    cfg, bundle = merged_bundle
    monkeypatch.setattr(retrieval, "ALL_PAIRS_LIMIT", 100)
    with pytest.raises(ConfigError, match="set eval.max_images"):
        evaluate(cfg, bundle, progress=False)
    demo_score = replace(cfg, eval=replace(cfg.eval, max_images=2, rerank_score="itm+sim"))
    with pytest.raises(ConfigError, match="eval.rerank_score=itm"):
        evaluate(demo_score, bundle, progress=False)


def test_the_api_scores_pairs_by_itm_and_refuses_global_scores(merged_bundle, world):
    from mvptr.app.api import Model

    cfg, bundle = merged_bundle
    model = Model(bundle, cfg, parse_phrases=False)
    images = model.images_from_store(str(world / "features.tsv"), str(world / "predictions.tsv"))[:3]
    texts = ["a red circle", "two shapes"]
    itm = model.score(images, texts, mode="itm")
    assert itm.shape == (3, 2) and torch.isfinite(itm).all()
    assert torch.allclose(model.score(images[2:3], texts[1:], mode="itm")[0, 0], itm[2, 1], atol=1e-5)
    for mode in ("uni", "both"):
        with pytest.raises(ValueError, match="global embeddings"):
            model.score(images, texts, mode=mode)
    grounded = model.ground(images[0], "a red circle left of a blue square", phrases=["a red circle"])
    assert len(grounded) == 1 and grounded[0].region >= 0


@pytest.mark.slow
def test_pretrain_both_stages_and_evaluate_through_the_cli(world_args, tmp_path, capsys):
    out = tmp_path / "run"
    steps = ["stage1.max_steps=3", "stage1.batch_size=8", "stage2.max_steps=6", "stage2.batch_size=8", "threads=1"]
    args = [*world_args(out), *MERGED, *steps]
    assert main(["pretrain", "--config", "tiny", *args]) == 0
    err = capsys.readouterr().err
    assert "skipped" not in err
    # stage 1: MCR^v and MCR^s on the merged encoder, with the stage1 settings; nothing cross-modal
    rows = [json.loads(line) for line in (out / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"mcr_v", "mcr_s"} <= set(rows[0])
    assert not {"itm", "mlm", "wpg", "vsc"} & set(rows[0])
    assert load_model_dir(out / "stage1" / "model").model.merged
    rows = [json.loads(line) for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"mcr_v", "mcr_s", "mlm", "itm", "wpg"} <= set(rows[0]) and "vsc" not in rows[0]
    assert rows[0]["temperature"] is None
    model_dir = out / "stage2" / "model"
    assert main(["evaluate", "--model", str(model_dir), "--config", "tiny", *world_args(out),
                 "eval.max_images=4"]) == 0
    result = json.loads((out / "stage2" / "eval.json").read_text())
    assert result["retrieval"]["pairs_scored"] == result["images"] * result["captions"] == 4 * 20
    capsys.readouterr()
    # the VSC objective of the default stages is refused, in one line
    assert main(["pretrain", "--config", "tiny", *world_args(tmp_path / "r2"), "model.merged_attention=true"]) == 2
    err = capsys.readouterr().err
    assert "objectives.vsc=false" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_stage2_continues_the_merged_stage1_model(world_args, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = [*world_args(out), *MERGED, "stage1.max_steps=2", "stage1.batch_size=8", "stage2.max_steps=2",
            "stage2.batch_size=8", "threads=1"]
    # stage 2 alone reads <out>/stage1/model, as for the two-stream model: none there is an error
    assert main(["pretrain", "--config", "tiny", "--stage", "stage2", *args]) == 2
    assert "stage1/model" in capsys.readouterr().err
    assert main(["pretrain", "--config", "tiny", "--stage", "stage1", *args]) == 0
    assert not (out / "stage2").exists()
    stage1 = load_model_dir(out / "stage1" / "model").model.state_dict()
    captured = {}
    original = pretrain_workflow.pretrain_stage

    def spy(cfg, stage, bundle, *rest, **kwargs):
        captured[stage.name] = {k: v.clone() for k, v in bundle.model.state_dict().items()}
        return original(cfg, stage, bundle, *rest, **kwargs)

    monkeypatch.setattr(pretrain_workflow, "pretrain_stage", spy)
    assert main(["pretrain", "--config", "tiny", "--stage", "stage2", *args]) == 0
    assert set(captured) == {"stage2"}
    assert all(torch.equal(captured["stage2"][k], v) for k, v in stage1.items())
    rows = [json.loads(line) for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"itm", "mlm", "wpg"} <= set(rows[0])
