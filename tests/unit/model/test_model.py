"""The model against transformers' BertModel, and its set-input properties."""

import pytest
import torch
from transformers import BertModel

from mvptr.checkpoint.bert_init import init_from_bert, init_phrase_rows, read_bert_dir
from mvptr.core.config import load_config
from mvptr.model.modeling import MVPTR
from mvptr.text.tokenizer import load_tokenizer, minilm_dir


@pytest.fixture(scope="module")
def minilm():
    cfg = load_config("demo").model
    bert_config, state = read_bert_dir(minilm_dir())
    model = MVPTR(cfg, num_phrases=3, tag_pieces=torch.tensor([[2003, 0], [3899, 2158]]))
    init_from_bert(model, bert_config, state, "minilm")
    return model.eval()


@pytest.mark.slow
def test_text_encoder_reproduces_bert(minilm):
    tok = load_tokenizer()
    enc = tok(["a big red circle above a small blue triangle", "two shapes"], padding=True, return_tensors="pt")
    ref = BertModel.from_pretrained(str(minilm_dir())).eval()
    with torch.no_grad():
        expected = ref(**enc, output_hidden_states=True).hidden_states[minilm.cfg.text_layers]
        ours = minilm.encode_text(enc["input_ids"], enc["attention_mask"].bool(),
                                  torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    keep = enc["attention_mask"].bool()
    assert torch.allclose(ours.hidden[keep], expected[keep], atol=1e-5)


def test_multimodal_encoder_takes_the_upper_bert_layers(minilm):
    bert_config, state = read_bert_dir(minilm_dir())
    depth = bert_config["num_hidden_layers"]
    first = state[f"encoder.layer.{depth - minilm.cfg.multimodal_layers}.attention.self.query.weight"]
    assert torch.equal(minilm.multimodal_encoder.layer[0].attention.self.query.weight, first)
    assert torch.equal(minilm.visual_encoder.layer[0].attention.self.query.weight,
                       state["encoder.layer.0.attention.self.query.weight"])


def test_phrase_rows_start_as_the_mean_of_their_word_rows(minilm):
    pieces = [[2158], [2417, 4418], [2158, 2417, 4418]]
    init_phrase_rows(minilm, pieces)
    w = minilm.word_rows
    assert torch.allclose(minilm.phrase_rows[1], (w[2417] + w[4418]) / 2)
    assert torch.allclose(minilm.phrase_rows[2], w[[2158, 2417, 4418]].mean(0))


def test_phrase_and_tag_sets_are_order_free():
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    model = MVPTR(cfg, num_phrases=6, tag_pieces=torch.tensor([[2003, 0], [3899, 2158], [4418, 0]])).eval()
    ids = torch.tensor([[101, 2417, 4418, 102]])
    words = torch.ones(1, 4, dtype=torch.bool)
    phrases = torch.tensor([[30522, 30524, 30525]])
    pm = torch.ones(1, 3, dtype=torch.bool)
    a = model.encode_text(ids, words, phrases, pm)
    b = model.encode_text(ids, words, phrases[:, [2, 0, 1]], pm)
    assert torch.allclose(a.global_emb, b.global_emb, atol=1e-6)
    assert torch.allclose(a.phrase_hidden[:, [2, 0, 1]], b.phrase_hidden, atol=1e-6)
    tags = torch.tensor([[[2003, 0], [3899, 2158], [4418, 0]]])
    tm = torch.ones(1, 3, dtype=torch.bool)
    feats = torch.randn(1, 4, cfg.region_feat_dim)
    rm = torch.ones(1, 4, dtype=torch.bool)
    x = model.encode_image(tags, tm, feats, rm)
    y = model.encode_image(tags[:, [1, 2, 0]], tm, feats, rm)
    assert torch.allclose(x.global_emb, y.global_emb, atol=1e-6)


def test_padding_does_not_change_outputs():
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    model = MVPTR(cfg, num_phrases=2, tag_pieces=torch.tensor([[2003]])).eval()
    feats = torch.randn(1, 3, cfg.region_feat_dim)
    tags = torch.tensor([[[2003]]])
    short = model.encode_image(tags, torch.ones(1, 1, dtype=torch.bool), feats, torch.ones(1, 3, dtype=torch.bool))
    padded = model.encode_image(tags, torch.ones(1, 1, dtype=torch.bool),
                                torch.cat([feats, torch.randn(1, 2, cfg.region_feat_dim)], 1),
                                torch.tensor([[True, True, True, False, False]]))
    assert torch.allclose(short.global_emb, padded.global_emb, atol=1e-6)


def test_config_mismatch_with_the_checkpoint_is_an_error():
    cfg = load_config("tiny").model
    model = MVPTR(cfg, num_phrases=0, tag_pieces=torch.tensor([[2003]]))
    bert_config, state = read_bert_dir(minilm_dir())
    with pytest.raises(ValueError, match="hidden_size=64"):
        init_from_bert(model, bert_config, state, "minilm")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_1_minus_p_of_the_elements_and_rescales_them(p):
    from mvptr.model.layers import Dropout

    drop = Dropout(p).train()
    x = torch.full((200, 1000), 2.0, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    n = kept.numel()
    # binomial standard deviation: the kept fraction is within 5 of them of 1 - p
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.allclose(y[kept], torch.full_like(y[kept], 2.0 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient goes through the kept elements only
    # neighbouring elements are independent: the 4 draws of one 64-bit number are not alike
    pairs = kept.flatten()[: n // 4 * 4].view(-1, 4).float()
    assert abs(torch.corrcoef(pairs.t())[0, 1:].abs().max().item()) < 0.02
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # seeded: the same mask again
    assert torch.equal(drop.eval()(x), x)


def test_cpu_attention_with_dropout_is_sdpa_before_the_mask():
    from mvptr.model.layers import SelfAttention

    cfg = load_config("tiny", ["model.attention_dropout=0.1"]).model
    attn = SelfAttention(cfg)
    x = torch.randn(3, 7, cfg.hidden_size)
    key_mask = torch.ones(3, 7, dtype=torch.bool)
    key_mask[1, 4:] = False
    expected = attn.eval()(x, key_mask)  # SDPA, no dropout
    attn.train()
    attn.attention_dropout.forward = lambda w: w  # the explicit CPU path, mask left out
    assert torch.allclose(attn(x, key_mask), expected, atol=1e-5)
    del attn.attention_dropout.forward
    torch.manual_seed(0)
    dropped = attn(x, key_mask)
    assert not torch.allclose(dropped, expected, atol=1e-3)  # and the mask is applied


@pytest.mark.slow
def test_compiled_layers_keep_their_names_and_outputs():
    torch.manual_seed(0)
    eager = MVPTR(load_config("tiny").model, num_phrases=3, tag_pieces=torch.tensor([[2003, 0]])).eval()
    # dynamo's tracing with the eager backend: the compiled path, without a C++ toolchain's minutes
    compiled = MVPTR(load_config("tiny", ["model.compile=eager"]).model, 3, torch.tensor([[2003, 0]])).eval()
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled.load_state_dict(eager.state_dict())
    ids = torch.tensor([[101, 2003, 3899, 102]])
    args = (ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros(1, 0, dtype=torch.long),
            torch.zeros(1, 0, dtype=torch.bool))
    with torch.no_grad():
        assert torch.allclose(compiled.encode_text(*args).hidden, eager.encode_text(*args).hidden, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it was traced


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_a_summary_only_pass_gives_the_full_pass_summary(pool):
    torch.manual_seed(0)
    model = MVPTR(load_config("tiny", [f"model.global_pool={pool}"]).model, 3, torch.tensor([[2003, 0]])).eval()
    h = model.cfg.hidden_size
    text, regions = torch.randn(4, 6, h), torch.randn(4, 5, h)
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 6]).bool()
    region_mask = torch.tensor([[1] * 5, [1] * 5, [1] * 2 + [0] * 3, [1] * 4 + [0]]).bool()
    with torch.no_grad():
        full = model.fuse(text, text_mask, regions, region_mask, keep_layers=(1,))
        summary = model.fuse(text, text_mask, regions, region_mask, keep_layers=(1,), summary_only=True)
    # [CLS] pooling: the last layer computes the [CLS] row alone; mean pooling needs every row
    assert summary.hidden.shape[1] == (1 if pool == "cls" else 11)
    assert torch.equal(summary.layers[1], full.layers[1])
    assert torch.allclose(model.itm_logits(summary), model.itm_logits(full), atol=1e-6)
