"""Official MVPTR checkpoints: a checkpoint in the released layout, from random weights, is
converted with `mvptr convert official`, and our model in the official layout must give
what a plain-torch forward written from the released code's layout gives."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from mvptr.checkpoint.model_dir import load_model_dir
from mvptr.cli import main
from mvptr.core.errors import ConfigError, UntrustedPickleError

H, HEADS, FFN, LAYERS, FEAT, WORDS = 32, 4, 64, 2, 14, 30522
# official phrase ids: rows after the words (with a gap), and one-word concepts reusing word rows
ID2PHRASE = {"30522": ["boat", "two"], "30523": ["man", "ride", "wave"], "30525": ["wave", "big"],
             "2158": ["man"], "30526": ["boat", "two"]}  # 30526 repeats 30522's phrase
TABLE = 30527
IMG_EPS = 1e-3  # the region LayerNorm's eps (img_layer_norm_eps), unlike the 1e-12 of the others


def official_state(region_layer_norm: bool) -> dict:
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        return {f"{prefix}.weight": 1 + rnd(H, scale=0.1), f"{prefix}.bias": rnd(H, scale=0.1)}

    s = {"bert.embeddings.word_embeddings.weight": rnd(TABLE, H),
         "bert.embeddings.position_embeddings.weight": rnd(64, H),
         "bert.embeddings.token_type_embeddings.weight": rnd(2, H),
         "bert.embeddings.position_ids": torch.arange(64)[None],
         **ln("bert.embeddings.LayerNorm")}
    for enc in ("txt_encoder", "vis_encoder", "mul_encoder"):
        for i in range(LAYERS):
            p = f"bert.{enc}.layer.{i}."
            for name in ("query", "key", "value"):
                s[p + f"attention.self.{name}.weight"] = rnd(H, H)
                s[p + f"attention.self.{name}.bias"] = rnd(H)
            s[p + "attention.output.dense.weight"] = rnd(H, H)
            s[p + "attention.output.dense.bias"] = rnd(H)
            s.update(ln(p + "attention.output.LayerNorm"))
            s[p + "intermediate.dense.weight"] = rnd(FFN, H)
            s[p + "intermediate.dense.bias"] = rnd(FFN)
            s[p + "output.dense.weight"] = rnd(H, FFN)
            s[p + "output.dense.bias"] = rnd(H)
            s.update(ln(p + "output.LayerNorm"))
    s.update({"bert.pooler.dense.weight": rnd(H, H), "bert.pooler.dense.bias": rnd(H),
              "bert.txt_proj": rnd(H, H), "bert.vis_proj": rnd(H, H),
              "bert.img_embedding.weight": rnd(H, FEAT), "bert.img_embedding.bias": rnd(H),
              "cls.predictions.transform.dense.weight": rnd(H, H), "cls.predictions.transform.dense.bias": rnd(H),
              **ln("cls.predictions.transform.LayerNorm"), "cls.predictions.bias": rnd(WORDS),
              "cls.seq_relationship.weight": rnd(2, H), "cls.seq_relationship.bias": rnd(2),
              "half_mlm.transform.dense.weight": rnd(H, H), "half_mlm.transform.dense.bias": rnd(H),
              **ln("half_mlm.transform.LayerNorm"), "half_mlm.bias": rnd(WORDS),
              "qa_head.weight": rnd(5, H), "qa_head.bias": rnd(5), "logit_scale": torch.tensor(math.log(1 / 0.05))})
    s["cls.predictions.decoder.weight"] = s["bert.embeddings.word_embeddings.weight"][:WORDS].clone()
    if region_layer_norm:
        s.update(ln("bert.LayerNorm"))
    return s


def write_official(root, state):
    root.mkdir()
    torch.save(state, root / "pytorch_model.bin")
    (root / "config.json").write_text(json.dumps({
        "hidden_size": H, "num_attention_heads": HEADS, "intermediate_size": FFN, "num_hidden_layers": 2 * LAYERS,
        "vocab_size": TABLE, "only_word_size": WORDS, "max_position_embeddings": 64, "type_vocab_size": 2,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-12,
        "img_layer_norm_eps": IMG_EPS, "img_feature_dim": FEAT, "use_img_layernorm": "bert.LayerNorm.weight" in state}))
    (root / "id2phrase_new.json").write_text(json.dumps(ID2PHRASE))


# ----- the reference: the released code's forward, in plain torch --------------------------------
def bert_layer(s, p, x, mask):
    def lin(name, v):
        return v @ s[f"{p}{name}.weight"].t() + s[f"{p}{name}.bias"]

    def norm(name, v):
        return F.layer_norm(v, (H,), s[f"{p}{name}.weight"], s[f"{p}{name}.bias"], 1e-12)

    b, n, _ = x.shape
    heads = lambda v: v.view(b, n, HEADS, H // HEADS).transpose(1, 2)
    q, k, v = (heads(lin(f"attention.self.{t}", x)) for t in ("query", "key", "value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(H // HEADS) + (1.0 - mask[:, None, None, :].float()) * -10000.0
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, H)
    a = norm("attention.output.LayerNorm", lin("attention.output.dense", ctx) + x)
    return norm("output.LayerNorm", lin("output.dense", F.gelu(lin("intermediate.dense", a))) + a)


def encoder(s, name, x, mask):
    for i in range(LAYERS):
        x = bert_layer(s, f"bert.{name}.layer.{i}.", x, mask)
    return x


def embed(s, ids, segment):
    pos = torch.arange(ids.shape[1])[None]
    x = (s["bert.embeddings.word_embeddings.weight"][ids] + s["bert.embeddings.position_embeddings.weight"][pos]
         + s["bert.embeddings.token_type_embeddings.weight"][segment])
    return F.layer_norm(x, (H,), s["bert.embeddings.LayerNorm.weight"], s["bert.embeddings.LayerNorm.bias"], 1e-12)


def reference(s, ids_a, mask_a, ids_b, mask_b, feats, region_mask):
    text = encoder(s, "txt_encoder", embed(s, ids_a, 0), mask_a)
    regions = feats @ s["bert.img_embedding.weight"].t() + s["bert.img_embedding.bias"]
    if "bert.LayerNorm.weight" in s:
        regions = F.layer_norm(regions, (H,), s["bert.LayerNorm.weight"], s["bert.LayerNorm.bias"], IMG_EPS)
    visual = encoder(s, "vis_encoder", torch.cat([embed(s, ids_b, 1), regions], 1), torch.cat([mask_b, region_mask], 1))
    joint = encoder(s, "mul_encoder", torch.cat([text, visual[:, ids_b.shape[1]:]], 1),
                    torch.cat([mask_a, region_mask], 1))
    pooled = torch.tanh(joint[:, 0] @ s["bert.pooler.dense.weight"].t() + s["bert.pooler.dense.bias"])
    itm = pooled @ s["cls.seq_relationship.weight"].t() + s["cls.seq_relationship.bias"]
    return {"text_emb": F.normalize(text[:, 0] @ s["bert.txt_proj"], dim=-1),
            "image_emb": F.normalize(visual[:, 0] @ s["bert.vis_proj"], dim=-1),
            "match_logodds": itm[:, 0] - itm[:, 1],  # label 0 = match
            "joint": joint}


@pytest.mark.slow
@pytest.mark.parametrize("region_layer_norm", [False, True])
def test_converted_official_checkpoint_reproduces_the_official_forward(tmp_path, region_layer_norm):
    state = official_state(region_layer_norm)
    write_official(tmp_path / "official", state)
    assert main(["convert", "official", str(tmp_path / "official"), str(tmp_path / "ours"), "--trust-pickle"]) == 0
    bundle = load_model_dir(tmp_path / "ours")
    model = bundle.model.eval()
    assert model.cfg.layout == "official" and model.cfg.region_layer_norm == region_layer_norm
    assert model.cfg.region_layer_norm_eps == IMG_EPS  # the released config's img_layer_norm_eps
    assert bundle.inputs == {"use_tags": True, "use_phrases": True}
    if region_layer_norm:
        assert model.region_norm.eps == IMG_EPS
    assert abs(model.temperature - 0.05) < 1e-6

    # two captions of different lengths, with phrases; tags as word pieces; a padded region
    words = [[101, 1037, 2158, 102], [101, 2158, 2003, 2652, 1037, 4049, 102]]
    phrases = [["30523", "2158"], ["30525", "30522", "30523"]]  # official ids
    tags = [[2158, 4049], [2158]]
    feats = torch.randn(2, 3, FEAT, generator=torch.Generator().manual_seed(2))
    region_mask = torch.tensor([[True, True, False], [True, True, True]])

    # the official inputs: [CLS] words phrases [SEP]; [CLS] tags [SEP] (padded)
    seq_a = [w[:-1] + [int(p) for p in ph] + [102] for w, ph in zip(words, phrases)]
    seq_b = [[101] + t + [102] for t in tags]
    pad = lambda rows: torch.tensor([r + [0] * (max(map(len, rows)) - len(r)) for r in rows])
    ids_a, ids_b = pad(seq_a), pad(seq_b)
    ref = reference(state, ids_a, ids_a != 0, ids_b, ids_b != 0, feats, region_mask)

    # ours: words, then phrases as rows of our vocabulary (looked up by their strings)
    vocab = bundle.phrase_vocab
    from mvptr.checkpoint.official import official_phrase_string

    our_phrases = [[WORDS + vocab.id(official_phrase_string(ID2PHRASE[p])) for p in ph] for ph in phrases]
    input_ids, phrase_ids = pad(words), pad(our_phrases)
    tag_pieces = pad(tags)[..., None]
    with torch.no_grad():
        text = model.encode_text(input_ids, input_ids != 0, phrase_ids, phrase_ids != 0)
        image = model.encode_image(tag_pieces, tag_pieces[..., 0] != 0, feats, region_mask)
        fused = model.fuse(text.hidden, text.mask, image.region_hidden, image.region_mask)
        itm = model.itm_logits(fused)
    torch.testing.assert_close(text.global_emb, ref["text_emb"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image.global_emb, ref["image_emb"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(itm[:, 1] - itm[:, 0], ref["match_logodds"], atol=1e-5, rtol=1e-4)
    for b in range(2):  # every word and phrase output of the joint encoder, in the official order
        n, m = len(words[b]), len(phrases[b])
        ours = torch.cat([fused.hidden[b, : n - 1], fused.hidden[b, input_ids.shape[1]: input_ids.shape[1] + m],
                          fused.hidden[b, n - 1: n]])
        torch.testing.assert_close(ours, ref["joint"][b, : n + m], atol=1e-5, rtol=1e-4)
        # and the MLM head on them
        w = state["bert.embeddings.word_embeddings.weight"][:WORDS]
        t = ref["joint"][b, : n - 1] @ state["cls.predictions.transform.dense.weight"].t()
        t = F.layer_norm(F.gelu(t + state["cls.predictions.transform.dense.bias"]), (H,),
                         state["cls.predictions.transform.LayerNorm.weight"],
                         state["cls.predictions.transform.LayerNorm.bias"], 1e-12)
        torch.testing.assert_close(model.mlm_logits(fused.hidden[b, : n - 1]).detach(),
                                   t @ w.t() + state["cls.predictions.bias"], atol=1e-4, rtol=1e-4)


def test_conversion_reports_and_maps_the_phrase_vocabulary(tmp_path):
    from mvptr.checkpoint.official import convert_official

    write_official(tmp_path / "official", official_state(False))
    report = convert_official(tmp_path / "official", tmp_path / "ours", trust_pickle=True)
    assert report["initialised"] == ["mcr_phrase_head.bias", *[f"mcr_phrase_head.transform.{k}" for k in
                                     ("LayerNorm.bias", "LayerNorm.weight", "dense.bias", "dense.weight")]]
    assert {"qa_head.weight", "cls.predictions.decoder.weight", "bert.embeddings.position_ids"} <= set(
        report["not_converted"])
    assert report["phrases"] == 4 and report["phrase_ids_dropped"] == 1
    bundle = load_model_dir(tmp_path / "ours")
    table = official_state(False)["bert.embeddings.word_embeddings.weight"]
    vocab = bundle.phrase_vocab
    rows = bundle.model.phrase_rows
    assert torch.equal(rows[vocab.id("big wave")], table[30525])
    assert torch.equal(rows[vocab.id("man ride wave")], table[30523])
    assert torch.equal(rows[vocab.id("man")], table[2158])  # a one-word concept reuses its word row


def test_a_pickled_checkpoint_needs_the_trust_flag(tmp_path, capsys):
    write_official(tmp_path / "official", official_state(False))
    assert main(["convert", "official", str(tmp_path / "official"), str(tmp_path / "ours")]) == 2
    assert re.search("--trust-pickle", capsys.readouterr().err)
    assert not (tmp_path / "ours").exists()
    from mvptr.checkpoint.official import convert_official

    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        convert_official(tmp_path / "official", tmp_path / "ours")


def test_the_api_runs_a_converted_model(tmp_path):
    import numpy as np

    from mvptr.app.api import Model
    from mvptr.checkpoint.model_dir import from_pretrained
    from mvptr.checkpoint.official import convert_official

    write_official(tmp_path / "official", official_state(True))
    convert_official(tmp_path / "official", tmp_path / "ours", trust_pickle=True)
    assert from_pretrained(tmp_path / "ours").cfg.layout == "official"
    model = Model.load(tmp_path / "ours", parse_phrases=False)
    rng = np.random.default_rng(0)
    image = {"region_feats": rng.random((4, FEAT), dtype=np.float32), "boxes": rng.random((4, 4)) * 20,
             "confs": np.ones(4, np.float32), "classes": ["man", "surfboard", "wave", "man"], "width": 32, "height": 32}
    scores = model.score([image, {**image, "region_feats": image["region_feats"][:0], "boxes": image["boxes"][:0],
                                  "confs": image["confs"][:0], "classes": []}],
                         ["a man riding a big wave", "two boats"])
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()
    # phrases by tuple or by string; a one-word concept is known by its string only
    a = model.encode_texts(["a man"], phrases=[[("wave", "big"), "man"]])
    b = model.encode_texts(["a man"], phrases=[["big wave", "man"]])
    assert a.hidden.shape[1] == 4 + 2 and torch.equal(a.hidden, b.hidden)


def test_a_converted_checkpoint_is_one_from_pretrained_away(tmp_path):
    """No config, no warning: the converted directory records the released pre-training's input limits."""
    import warnings

    from mvptr.app.api import Model
    from mvptr.checkpoint.official import OFFICIAL_LIMITS

    write_official(tmp_path / "official", official_state(True))
    assert main(["convert", "official", str(tmp_path / "official"), str(tmp_path / "ours"), "--trust-pickle"]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["limits"] == OFFICIAL_LIMITS
    assert OFFICIAL_LIMITS == {"max_tokens": 35, "max_phrases": 5, "max_tags": 20, "max_regions": 50}  # paper 4.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = Model.from_pretrained(tmp_path / "ours", parse_phrases=False)
    assert {k: getattr(model.cfg.data, k) for k in OFFICIAL_LIMITS} == OFFICIAL_LIMITS
    assert model.cfg.model.layout == "official" and model.cfg.objectives.use_tags and model.cfg.objectives.use_phrases
    with pytest.raises(ConfigError, match="max_tokens 60 \\+ max_phrases 5 exceed the model's 64 positions"):
        Model.from_pretrained(tmp_path / "ours", limits={"max_tokens": 60})
