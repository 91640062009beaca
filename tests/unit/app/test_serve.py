"""`mvptr serve`: the HTTP API and its refusals (FastAPI's test client), the coarse stage over
large collections, adding images to an index, and the page in a real browser."""

import json
import shutil
import threading
from urllib.parse import quote, urlencode

import numpy as np
import pytest

from mvptr.app.api import Model
from mvptr.app.coarse import TARGET_RECALL, CoarseIndex, sample_rows, write_ivf
from mvptr.app.search import SearchIndex, build_index
from mvptr.cli import main, parse

pytestmark = pytest.mark.slow  # each module builds a model and an index

fastapi = pytest.importorskip("fastapi", reason="needs mvptr[serve]: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from mvptr.app.serve import load_service  # noqa: E402
from mvptr.app.server import MAX_BODY, MAX_OBJECTS, MAX_QUERY, MAX_RERANK, MAX_TOP  # noqa: E402
from serve_helpers import live, tiny_model  # noqa: E402

QUERY = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def model_dir(world_args, tmp_path_factory):
    return tiny_model(world_args, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def vqa_dir(world_args, tmp_path_factory):
    return tiny_model(world_args, tmp_path_factory.mktemp("vqa"), answers=["red", "blue", "circle", "two"])


@pytest.fixture(scope="module")
def index_dir(model_dir, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "index"
    build_index(model_dir, out, str(world / "features.tsv"), str(world / "predictions.tsv"), config="tiny",
                image_dir=str(world / "images"))
    return out


@pytest.fixture(scope="module")
def app(index_dir, vqa_dir):
    return load_service(str(index_dir), vqa_model=str(vqa_dir))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def index(app):
    return app.state.index


# ----------------------------------------------------------------------------- endpoints

def test_page_health_and_docs(client, world):
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    health = client.get("/api/health").json()
    n = len(list((world / "images").glob("*.png")))
    assert health["status"] == "ok" and health["images"] == n and health["image_files"] == n
    assert health["vqa"] is True and health["coarse"] == "exact" and health["recall"] == 1.0
    assert client.get("/docs").status_code == 404  # its assets come from a CDN: blank offline, and against the CSP
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/ground", "/api/answer", "/api/health", "/api/images/{image_id}"} <= set(paths)


def test_search_gives_the_index_ranking(client, index):
    got = client.get("/api/search", params={"q": QUERY, "top": 5, "rerank": 8}).json()
    want = index.query(QUERY, 5, 8, "itm+sim")
    assert [r["id"] for r in got["results"]] == [h.image_id for h in want]
    assert [r["rank"] for r in got["results"]] == [1, 2, 3, 4, 5]
    for r, h in zip(got["results"], want):
        assert abs(r["score"] - h.score) < 1e-4 and abs(r["coarse"] - h.similarity) < 1e-5
        assert r["image"] == f"/api/images/{h.image_id}"
        classes = index.store[h.image_id]["classes"]  # the objects detected, each once
        assert r["objects"] and r["objects"] == list(dict.fromkeys(classes))[:MAX_OBJECTS]
    assert {"encode_ms", "coarse_ms", "rerank_ms", "total_ms"} <= set(got["timing"]) and got["reranked"] == 8
    assert client.get("/api/search", params={"q": QUERY, "top": 6, "rerank": 2}).json()["reranked"] == 6
    coarse = client.get("/api/search", params={"q": QUERY, "top": 4, "rerank": 0}).json()
    emb = index.model.encode_texts([QUERY]).emb[0]
    assert [r["id"] for r in coarse["results"]] == [index.ids[i] for i in (index.emb @ emb).topk(4).indices]
    assert all(r["score"] is None for r in coarse["results"]) and "rerank_ms" not in coarse["timing"]


@pytest.mark.parametrize("params, says", [
    ({"q": "x" * (MAX_QUERY + 1)}, f"at most {MAX_QUERY} characters"),
    ({"q": ""}, "at least 1 character"),
    ({"q": "   "}, "the query is empty"),
    ({}, "Field required"),
    ({"q": QUERY, "top": 0}, "greater than or equal to 1"),
    ({"q": QUERY, "top": MAX_TOP + 1}, f"less than or equal to {MAX_TOP}"),
    ({"q": QUERY, "top": "ten"}, "valid integer"),
    ({"q": QUERY, "rerank": -1}, "greater than or equal to 0"),
    ({"q": QUERY, "rerank": MAX_RERANK + 1}, f"less than or equal to {MAX_RERANK}"),
])
def test_search_bounds_are_422_with_a_message(client, params, says):
    r = client.get("/api/search", params=params)
    assert r.status_code == 422 and says in json.dumps(r.json()["detail"])


@pytest.mark.parametrize("q", ["\u00e9t\u00e9 \U0001F600 \u05e9\u05dc\u05d5\u05dd", "\x00\x01", "?" * MAX_QUERY,
                               "a " * (MAX_QUERY // 2), "<script>alert(1)</script>", "%2e%2e/..", "[CLS] [SEP] [MASK]"])
def test_any_query_within_the_limits_is_answered(client, index, q):
    r = client.get("/api/search", params={"q": q, "top": 3, "rerank": 4})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    r = client.get("/api/ground", params={"image": index.ids[0], "q": q})
    assert r.status_code == 200 and all(p["phrase"] in q for p in r.json()["phrases"])


def test_images_are_looked_up_never_joined_to_a_path(client, index, world):
    image_id = index.ids[0]
    r = client.get(f"/api/images/{image_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (world / "images" / f"{image_id}.png").read_bytes()
    secret = world / "captions.json"
    for path in ["../captions", "..%2Fcaptions", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "/etc/passwd",
                 quote(str(secret), safe=""), quote(str(world / "images" / f"{image_id}.png"), safe=""),
                 f"..%2Fimages%2F{image_id}", f"{image_id}.png", "%00", "nope"]:
        r = client.get(f"/api/images/{path}")
        assert r.status_code == 404, path
        assert r.content != secret.read_bytes()


def test_an_image_without_a_file_is_404(index_dir, tmp_path, client):
    files = json.loads((index_dir / "files.json").read_text())
    assert client.get(f"/api/images/{next(iter(files))}").status_code == 200
    partial = tmp_path / "index"
    shutil.copytree(index_dir, partial)
    dropped = next(iter(files))
    (partial / "files.json").write_text(json.dumps({k: v for k, v in files.items() if k != dropped}))
    app = load_service(str(partial))
    c = TestClient(app, base_url="http://localhost")
    r = c.get(f"/api/images/{dropped}")
    assert r.status_code == 404 and "no image file" in r.json()["detail"]
    hit = next(x for x in c.get("/api/search", params={"q": QUERY, "top": 200 // 2}).json()["results"]
               if x["id"] == dropped)
    assert hit["image"] is None
    assert c.get("/api/health").json()["vqa"] is False
    r = c.post("/api/answer", json={"image": dropped, "question": "what color is it?"})
    assert r.status_code == 501 and "--vqa-model" in r.json()["detail"]


def test_ground_draws_each_phrase_of_the_query(client, index):
    image_id = index.ids[3]
    got = client.get("/api/ground", params={"image": image_id, "q": QUERY}).json()
    want = index.model.ground(index.store[image_id], QUERY)
    assert [p["phrase"] for p in got["phrases"]] == [g.phrase for g in want] == ["a red circle", "a blue square"]
    for p, g in zip(got["phrases"], want):
        assert p["region"] == g.region and np.allclose(p["box"], g.box, atol=0.01)
        assert abs(p["score"] - g.similarity) < 1e-5
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 <= x1 <= got["width"] and 0 <= y0 <= y1 <= got["height"]
    assert got["regions"] == len(index.store[image_id]["boxes"])
    assert client.get("/api/ground", params={"image": "nope", "q": QUERY}).status_code == 404
    assert client.get("/api/ground", params={"image": "../" + image_id, "q": QUERY}).status_code == 404
    assert client.get("/api/ground", params={"image": image_id, "q": "y" * (MAX_QUERY + 1)}).status_code == 422


def test_answer_gives_the_vqa_heads_answers(client, index, vqa_dir):
    image_id = index.ids[1]
    question = "what color is the circle?"
    got = client.post("/api/answer", json={"image": image_id, "question": question, "top": 3}).json()
    want = Model.load(vqa_dir, config="tiny", parse_phrases=False).answer(index.store[image_id], question, top=3)
    assert [(a["answer"], round(a["probability"], 4)) for a in got["answers"]] == [(a, round(p, 4)) for a, p in want]
    for body, status in [({"image": "nope", "question": question}, 404),
                         ({"image": image_id, "question": "q" * (MAX_QUERY + 1)}, 422),
                         ({"image": image_id, "question": ""}, 422),
                         ({"image": image_id, "question": question, "top": 0}, 422),
                         ({"image": image_id}, 422)]:
        assert client.post("/api/answer", json=body).status_code == status, body
    assert client.post("/api/answer", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422


def test_request_bodies_are_size_limited(client, index):
    big = json.dumps({"image": index.ids[0], "question": "x" * MAX_BODY}).encode()
    r = client.post("/api/answer", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and f"{MAX_BODY} bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit counts what arrives
        yield b'{"image": "' + index.ids[0].encode() + b'", "question": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/api/answer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    ok = client.post("/api/answer", json={"image": index.ids[0], "question": "what shape?"})
    assert ok.status_code == 200


def test_a_failing_request_does_not_stop_the_server(client, index, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(index, "query", broken)
    monkeypatch.setattr(index, "query_batch", broken)  # what the server calls, for a batch of searches
    r = client.get("/api/search", params={"q": QUERY})
    assert r.status_code == 500 and r.json()["detail"] == "internal error (RuntimeError)"
    monkeypatch.undo()
    assert client.get("/api/health").status_code == 200
    assert client.get("/api/search", params={"q": QUERY}).status_code == 200


def test_requests_take_the_model_in_the_order_they_came():
    import asyncio

    from mvptr.app.worker import ModelQueue

    order, gate = [], threading.Event()

    def run(jobs):
        gate.wait(10)  # the first request holds the model while the others queue
        order.extend(i for (i,) in jobs)
        return [None] * len(jobs)

    queue = ModelQueue({"ground": run}, workers=1, capacity=10)

    async def requests():
        first = asyncio.ensure_future(queue.run("ground", (0,)))
        await asyncio.sleep(0.05)
        rest = []
        for i in range(1, 7):
            rest.append(asyncio.ensure_future(queue.run("ground", (i,))))
            await asyncio.sleep(0.001)
        gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(requests())
    assert order == list(range(7))


def test_the_server_binds_loopback_unless_told(index_dir):
    assert parse(["serve", "--index", str(index_dir)]).host == "127.0.0.1"
    assert parse(["serve", "--index", str(index_dir), "--host", "0.0.0.0"]).host == "0.0.0.0"


# ----------------------------------------------------------------------------- the model version

def test_an_index_of_another_model_is_refused(world_args, index_dir, model_dir, tmp_path, capsys):
    other = tiny_model(world_args, tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="built with another version of the model"):
        SearchIndex(index_dir, parse_phrases=False, model_dir=other)
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--index", str(index_dir), "--model", str(other)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mvptr serve: ") and "another version of the model" in err and len(err.splitlines()) == 1
    # the model retrained in place: the files the index was built from are gone
    moved = tmp_path / "moved"
    shutil.copytree(index_dir, moved)
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    SearchIndex(moved, parse_phrases=False, model_dir=copy)  # same files elsewhere: accepted
    for name in ("eval.json", "README.md", "probes.json"):  # results beside the model do not change it
        (copy / name).write_text("{}")
    SearchIndex(moved, parse_phrases=False, model_dir=copy)
    for name in ("eval.json", "README.md", "probes.json"):
        (copy / name).unlink()
    meta = json.loads((moved / "index.json").read_text())
    (moved / "index.json").write_text(json.dumps({**meta, "model": str(copy)}))
    shutil.rmtree(copy)
    shutil.copytree(other, copy)
    with pytest.raises(ValueError, match="another version of the model"):
        SearchIndex(moved, parse_phrases=False)
    (moved / "index.json").write_text(json.dumps({**meta, "format": "mvptr-search/1"}))
    with pytest.raises(ValueError, match="index format mvptr-search/1.*rebuild"):
        SearchIndex(moved, parse_phrases=False)


# ----------------------------------------------------------------------------- large collections

def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_coarse_stage_exact_and_ivf(tmp_path):
    emb = unit_rows(3000, 16, 0)
    np.save(tmp_path / "emb.npy", emb)
    mapped = np.load(tmp_path / "emb.npy", mmap_mode="r")
    queries = unit_rows(20, 16, 1)
    exact = CoarseIndex(mapped)
    scores, rows = exact.search(queries, 10)
    want = np.argsort(-(queries @ emb.T), axis=1, kind="stable")[:, :10]
    assert (rows == want).all() and np.allclose(scores, np.take_along_axis(queries @ emb.T, want, 1), atol=1e-5)
    meta = write_ivf(mapped[:2000], tmp_path / "a.faiss")
    assert meta["nlist"] == int(2000**0.5)
    write_ivf(mapped, tmp_path / "b.faiss", old=tmp_path / "a.faiss")  # the last 1000 rows added, no training
    every = CoarseIndex(mapped, tmp_path / "b.faiss", nprobe=meta["nlist"])
    assert (every.search(queries, 10)[1] == want).all()  # every list visited: exact
    assert CoarseIndex(mapped, tmp_path / "b.faiss").ivf.nprobe == meta["nlist"] // 8  # the default share
    few = CoarseIndex(mapped, tmp_path / "b.faiss", nprobe=2)
    s, r = few.search(queries, 10)
    assert ((r >= 0) | (s < -1e30)).all() and (r < 3000).all()
    with pytest.raises(ValueError, match="2000 vectors for 3000 embeddings"):
        CoarseIndex(mapped, tmp_path / "a.faiss")
    assert exact.search(queries, 0)[1].shape == (20, 0) and exact.search(queries, 10 ** 6)[1].shape == (20, 3000)


def exact_recall(emb: np.ndarray, path, nprobe: int, rows: np.ndarray) -> float:
    """Recall@10 of the IVF index at ``path`` visiting ``nprobe`` lists, recomputed with numpy."""
    want = np.argsort(-(emb[rows] @ emb.T), axis=1, kind="stable")[:, :10]
    got = CoarseIndex(emb, path, nprobe=nprobe).search(emb[rows], 10)[1]
    return sum(len(set(g.tolist()) & set(w.tolist())) for g, w in zip(got, want)) / want.size


def test_the_ivf_index_visits_as_many_lists_as_reach_the_target_recall(tmp_path):
    emb = unit_rows(20_000, 32, 2)  # uniform: the default share of lists keeps far less than 0.95
    meta = write_ivf(emb, tmp_path / "u.faiss")
    assert meta["target_recall"] == TARGET_RECALL == 0.95 and meta["recall_queries"] == 200
    rows = sample_rows(len(emb), meta["recall_queries"], meta["recall_seed"])
    assert meta["recall"] >= 0.95 and meta["recall"] == pytest.approx(exact_recall(emb, tmp_path / "u.faiss",
                                                                                   meta["nprobe"], rows), abs=1e-4)
    assert meta["nprobe"] < meta["nlist"]
    half = meta["nprobe"] // 2  # doubling: the step below did not reach the target
    assert half >= 1 and exact_recall(emb, tmp_path / "u.faiss", half, rows) < 0.95
    assert exact_recall(emb, tmp_path / "u.faiss", max(1, meta["nlist"] // 8), rows) < 0.95  # the old default
    every = write_ivf(emb, tmp_path / "e.faiss", target_recall=1.0)
    assert every["nprobe"] == every["nlist"] and every["recall"] == pytest.approx(1.0, abs=1e-3)
    low = write_ivf(emb, tmp_path / "l.faiss", target_recall=0.05)
    assert low["nprobe"] == 1 and low["recall"] >= 0.05
    for bad in (0, -0.5, 1.01, float("nan"), "0.9", True):
        with pytest.raises(ValueError, match="target recall"):
            write_ivf(emb[:2000], tmp_path / "x.faiss", target_recall=bad)
    assert not (tmp_path / "x.faiss").exists()


def test_above_the_exact_limit_the_index_is_approximate(model_dir, world, index_dir, tmp_path):
    meta = build_index(model_dir, tmp_path / "ivf", str(world / "features.tsv"), str(world / "predictions.tsv"),
                       config="tiny", exact_limit=50)
    coarse = meta["coarse"]
    assert coarse["kind"] == "ivf" and (tmp_path / "ivf" / "coarse.faiss").exists()
    assert coarse["recall"] >= coarse["target_recall"] == 0.95 and 1 <= coarse["nprobe"] <= coarse["nlist"]
    assert json.loads((tmp_path / "ivf" / "index.json").read_text())["coarse"] == coarse
    chosen = SearchIndex(tmp_path / "ivf", parse_phrases=False)  # the measured nprobe by default
    assert chosen.coarse.ivf.nprobe == coarse["nprobe"] and chosen.recall == coarse["recall"]
    exact = SearchIndex(index_dir, parse_phrases=False)
    assert exact.recall == 1.0
    approx = SearchIndex(tmp_path / "ivf", parse_phrases=False, nprobe=coarse["nlist"])  # an explicit one wins
    assert approx.coarse.ivf.nprobe == coarse["nlist"]
    assert approx.recall is None or coarse["nprobe"] == coarse["nlist"]  # not the nprobe measured
    assert isinstance(approx.coarse.emb, np.memmap) and approx.coarse.kind.startswith("ivf")
    for q in (QUERY, "two small green triangles"):
        assert [h.image_id for h in approx.query(q, 10, score="uni")] == [h.image_id for h in
                                                                           exact.query(q, 10, score="uni")]
    # --add measures again, for the target it is given (else the index's)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for p in sorted((world / "images").glob("*.png"))[:3]:
        shutil.copy(p, pictures / f"extra_{p.name}")
    grown = build_index(model_dir, tmp_path / "ivf", images=str(pictures), detector=str(world / "detector.safetensors"),
                        add=True, target_recall=1.0)
    assert grown["images"] == meta["images"] + 3 and grown["coarse"]["nlist"] == coarse["nlist"]
    assert grown["coarse"]["nprobe"] == coarse["nlist"] and grown["coarse"]["target_recall"] == 1.0
    assert SearchIndex(tmp_path / "ivf", parse_phrases=False).coarse.ivf.nprobe == coarse["nlist"]
    for bad in (0, 1.5, -1):
        with pytest.raises(ValueError, match="target recall"):
            build_index(model_dir, tmp_path / "bad", str(world / "features.tsv"), config="tiny", target_recall=bad)
        assert main(["search", "build", "--model", str(model_dir), "--out", str(tmp_path / "bad"), "--features",
                     str(world / "features.tsv"), "--predictions", str(world / "predictions.tsv"),
                     "--target-recall", str(bad)]) == 2
    assert not (tmp_path / "bad").exists()


def test_search_build_adds_images_to_an_index(model_dir, world_args, world, index_dir, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for p in sorted((world / "images").glob("*.png"))[:6]:
        shutil.copy(p, pictures / f"extra_{p.name}")
    out = tmp_path / "index"
    shutil.copytree(index_dir, out)
    before = SearchIndex(out, parse_phrases=False)
    n = len(before.ids)
    assert main(["search", "build", "--model", str(model_dir), "--images", str(pictures), "--detector",
                 str(world / "detector.safetensors"), "--out", str(out), "--add"]) == 0
    said = capsys.readouterr()
    assert f"indexed 6 images in {out} ({n + 6} in all, {n + 6} with an image file" in said.out
    assert "embedding: 100%|" in said.err and "6/6" in said.err  # the progress bar
    after = SearchIndex(out, parse_phrases=False)
    assert after.ids[:n] == before.ids and after.ids[n:] == sorted(f"extra_{p.name[:-4]}"
                                                                   for p in (world / "images").glob("*.png"))[:6]
    assert np.array_equal(after.emb[:n].numpy(), before.emb.numpy())
    detector = str(world / "detector.safetensors")
    alone = build_index(model_dir, tmp_path / "alone", images=str(pictures), detector=detector, config="tiny")
    assert alone["images"] == 6
    assert np.allclose(after.emb[n:].numpy(), SearchIndex(tmp_path / "alone", parse_phrases=False).emb.numpy(),
                       atol=1e-6)
    extra = after.ids[n]
    assert extra in after.store and after.store[extra]["boxes"].shape[1] == 4
    assert after.files[extra] == str((pictures / f"{extra}.png").resolve())
    hits = after.query("a red circle", top=len(after.ids), score="uni")
    assert {h.image_id for h in hits} == set(after.ids)
    with pytest.raises(ValueError, match="is already in the index"):
        build_index(model_dir, out, images=str(pictures), detector=detector, add=True)
    other = tiny_model(world_args, tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="another version of the model"):
        build_index(other, out, images=str(pictures), detector=detector, add=True)
    with pytest.raises(ValueError, match="leave out --config"):
        build_index(model_dir, out, images=str(pictures), detector=detector, add=True, config="tiny")
    with pytest.raises(FileNotFoundError, match="index.json: not found"):
        build_index(model_dir, tmp_path / "none", images=str(pictures), detector=detector, add=True)
    assert SearchIndex(out, parse_phrases=False).ids == after.ids  # the refusals left the index as it was
    # an index of raw images takes more: its first region store stays where it was
    more = tmp_path / "more"
    more.mkdir()
    for p in sorted((world / "images").glob("*.png"))[6:9]:
        shutil.copy(p, more / p.name)
    grown = build_index(model_dir, tmp_path / "alone", images=str(more), detector=detector, add=True)
    assert grown["images"] == 9 and [s["features"] for s in grown["stores"]] == [
        str((tmp_path / "alone" / d / "features.tsv").resolve()) for d in ("regions", "regions-1")]
    both = SearchIndex(tmp_path / "alone", parse_phrases=False)
    assert np.array_equal(both.store[after.ids[n]]["boxes"], after.store[after.ids[n]]["boxes"])
    assert len(both.store[sorted(more.iterdir())[0].stem]["boxes"]) > 0


def test_an_image_dir_that_names_no_image_is_an_error(model_dir, world, tmp_path):
    with pytest.raises(ValueError, match="no image file is named after an image id"):
        build_index(model_dir, tmp_path / "i", str(world / "features.tsv"), str(world / "predictions.tsv"),
                    config="tiny", image_dir=str(tmp_path))


# ----------------------------------------------------------------------------- the page in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def live_server(app):
    pytest.importorskip("uvicorn")
    with live(app) as port:
        yield f"http://127.0.0.1:{port}"


def test_the_page_in_a_browser(live_server, index, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (Debian/Ubuntu), then rerun")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (mvptr[test])")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(live_server)
            page.wait_for_function("document.querySelector('#about').textContent.includes('images')")
            page.fill("#q", QUERY)
            page.press("#q", "Enter")
            page.wait_for_selector("#results .result")
            cards = page.locator("#results .result")
            assert cards.count() == 10
            want = [h.image_id for h in index.query(QUERY, 10, 20)]
            assert [cards.nth(i).get_attribute("data-id") for i in range(10)] == want
            assert page.locator("#results .result img").first.evaluate("img => img.complete && img.naturalWidth") > 0
            cards.first.click()
            page.wait_for_selector("#boxes rect.box", state="attached")
            boxes = page.locator("#boxes rect.box")
            assert boxes.count() == 2 and page.locator("#labels .label").all_inner_texts() == [
                "a red circle", "a blue square"]
            assert all(boxes.nth(i).bounding_box()["width"] > 0 for i in range(2))  # drawn, not just present
            page.wait_for_selector("#ask", state="visible")
            page.fill("#question", "what color is the circle?")
            page.press("#question", "Enter")
            page.wait_for_selector("#answers .answer")
            assert page.locator("#answers .answer").count() == 3
            shot = page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "page.png").stat().st_size == len(shot)
            # the scores are explained, on the page and on each card
            help_text = page.locator("#scores-help").inner_text()
            assert "cosine" in help_text and "log-odds" in help_text and page.locator("#scores-help").is_visible()
            assert cards.first.locator(".scores").get_attribute("title") == page.locator("#scores-help").text_content()
            classes = index.store[want[0]]["classes"]
            assert cards.first.locator(".objects").inner_text() == ", ".join(list(dict.fromkeys(classes))[:MAX_OBJECTS])
            # the query is in the URL; another query is a new history entry, and Back restores the first
            assert page.evaluate("new URLSearchParams(location.search).get('q')") == QUERY
            other = "two small green triangles"
            page.fill("#q", other)
            page.press("#q", "Enter")
            page.wait_for_function("(q) => new URLSearchParams(location.search).get('q') === q", arg=other)
            shows = "(want) => JSON.stringify(Array.from(document.querySelectorAll('#results .result'), " \
                    "(c) => c.dataset.id)) === JSON.stringify(want)"  # the page shows these results
            want_other = [h.image_id for h in index.query(other, 10, 20)]
            assert want_other != want
            page.wait_for_function(shows, arg=want_other)
            page.go_back()
            page.wait_for_function(shows, arg=want)
            assert page.input_value("#q") == QUERY
            assert not errors, errors
            # a shared link at phone width: the query's results, nothing wider than the screen
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.on("pageerror", lambda err: errors.append(str(err)))
            phone.goto(f"{live_server}/?{urlencode({'q': QUERY})}")
            phone.wait_for_function(shows, arg=want)
            phone.wait_for_function("document.querySelector('#about').textContent.includes('images')")
            assert phone.input_value("#q") == QUERY
            fits = "document.documentElement.scrollWidth <= window.innerWidth"
            assert phone.evaluate(fits)
            phone.locator("#results .result").first.click()
            phone.wait_for_selector("#boxes rect.box", state="attached")
            assert phone.evaluate(fits) and phone.locator("#detail").bounding_box()["width"] <= 390
            phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
