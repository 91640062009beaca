"""`mvptr serve`, search by example: "more like this" over the index's stored image embeddings,
uploaded images detected with the index's detector, their refusals, and both on the page in a
real browser."""

import io
import json
import shutil
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image

from mvptr.app.examples import MAX_PIXELS, MAX_UPLOAD, index_detector, like, recorded_detector
from mvptr.app.search import build_index
from mvptr.cli import main
from mvptr.vision.detect import DemoDetector

pytestmark = pytest.mark.slow  # builds a model and two indexes

fastapi = pytest.importorskip("fastapi", reason="needs mvptr[serve]: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from mvptr.app.serve import load_service  # noqa: E402
from serve_helpers import live, tiny_model  # noqa: E402

UPLOAD = "/api/similar/upload"


@pytest.fixture(scope="module")
def model_dir(world_args, tmp_path_factory):
    return tiny_model(world_args, tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def index_dir(model_dir, world, tmp_path_factory):
    """An index of the world's image files, detected with the world's detector (which it records)."""
    out = tmp_path_factory.mktemp("by-images") / "index"
    build_index(model_dir, out, config="tiny", images=str(world / "images"),
                detector=str(world / "detector.safetensors"))
    return out


@pytest.fixture(scope="module")
def app(index_dir):
    return load_service(str(index_dir))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def index(app):
    return app.state.index


def cosines(index, image_id: str) -> dict[str, float]:
    """The cosine of the stored embeddings of ``image_id`` and every other image of the index."""
    row = index.ids.index(image_id)
    sims = index.emb.numpy() @ index.emb[row].numpy()
    return {i: float(s) for r, (i, s) in enumerate(zip(index.ids, sims)) if r != row}


def nearest(index, image_id: str, top: int) -> list[str]:
    """The page's answer: the API's (whose order is checked against numpy above; near-ties may
    fall either way between faiss and numpy)."""
    return [h.image_id for h in like(index, image_id, top)]


def png(world, image_id: str) -> bytes:
    return (world / "images" / f"{image_id}.png").read_bytes()


def encoded(image: Image.Image, kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


# ----------------------------------------------------------------------------- more like this

def test_the_index_records_its_detector(index_dir, world):
    meta = json.loads((index_dir / "index.json").read_text())
    assert recorded_detector(meta) == {"kind": "demo", "weights": str((world / "detector.safetensors").resolve())}


def test_more_like_this_ranks_by_the_stored_embeddings(client, index):
    image = index.ids[5]
    got = client.get("/api/similar", params={"image": image, "top": 6}).json()
    cos = cosines(index, image)
    best = sorted(cos.values(), reverse=True)[:6]
    assert np.allclose([r["coarse"] for r in got["results"]], best, atol=1e-5)  # the six nearest, nearest first
    assert image not in [r["id"] for r in got["results"]]  # the example itself is left out
    for r in got["results"]:
        assert abs(r["coarse"] - cos[r["id"]]) < 1e-5 and r["score"] is None and r["image"] == f"/api/images/{r['id']}"
        assert r["objects"] == list(dict.fromkeys(index.store[r["id"]]["classes"]))[:8]
    assert got["like"] == image and got["like_image"] == f"/api/images/{image}" and got["rerank"] == 0
    assert {"coarse_ms", "total_ms"} <= set(got["timing"])
    every = client.get("/api/similar", params={"image": image, "top": 100}).json()["results"]
    assert len(every) == 100 and image not in [r["id"] for r in every]


@pytest.mark.parametrize("params, status, says", [
    ({"image": "no-such-image"}, 404, "no image 'no-such-image' in the index"),
    ({"image": "x", "top": 0}, 422, "greater than or equal to 1"),
    ({"image": "x", "top": 101}, 422, "less than or equal to 100"),
    ({}, 422, "Field required"),
])
def test_more_like_this_refusals(client, params, status, says):
    r = client.get("/api/similar", params=params)
    assert r.status_code == status and says in json.dumps(r.json()["detail"])


# ----------------------------------------------------------------------------- uploads

def test_an_uploaded_image_of_the_index_finds_itself_first(client, app, index, world):
    image = index.ids[7]
    served = app.state.queue.served
    got = client.post(UPLOAD, params={"top": 5}, content=png(world, image)).json()
    assert app.state.queue.served == served + 1  # through the model's queue
    assert got["results"][0]["id"] == image and got["results"][0]["coarse"] > 0.999
    assert len(got["results"]) == 5 and all(r["score"] is None for r in got["results"])
    assert got["objects"] == list(dict.fromkeys(index.store[image]["classes"]))[:8]
    assert {"detect_ms", "encode_ms", "coarse_ms", "total_ms"} <= set(got["timing"])
    # the same picture as a JPEG, sent under another type: its bytes say what it is
    pixels = Image.open(io.BytesIO(png(world, image))).convert("RGB")
    jpeg = client.post(UPLOAD, params={"top": 3}, content=encoded(pixels, "JPEG"),
                       headers={"content-type": "text/plain"})
    assert jpeg.status_code == 200 and image in [r["id"] for r in jpeg.json()["results"]]


def test_upload_refusals(client, app, world, index):
    def refused(data: bytes, status: int, says: str, **headers):
        r = client.post(UPLOAD, content=data, headers={"content-type": "image/png", **headers})
        assert r.status_code == status and says in r.json()["detail"], (r.status_code, r.text)
        assert r.headers["x-content-type-options"] == "nosniff"

    served = app.state.queue.served
    refused(b"<html><script>alert(1)</script></html>", 415, "not an image")
    refused(b"", 422, "the upload is empty")
    assert app.state.queue.served == served  # refused by its bytes before it waits for the model
    refused(png(world, index.ids[0])[:60], 415, "could not be read")  # a PNG cut short
    refused(b"x" * (MAX_UPLOAD + 1), 413, f"over {MAX_UPLOAD} bytes")
    side = int(MAX_PIXELS ** 0.5) + 1
    refused(encoded(Image.new("1", (side, side))), 413, f"over {MAX_PIXELS} in all")  # small file, huge image
    refused(encoded(Image.new("RGB", (64, 64), (255, 255, 255))), 422, "found no object")

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(MAX_UPLOAD // 65536 + 1):
            yield b"\x89PNG" + b"x" * 65532

    assert client.post(UPLOAD, content=chunks()).status_code == 413
    assert client.post(UPLOAD, params={"top": 0}, content=png(world, index.ids[0])).status_code == 422


def test_without_a_detector_uploads_are_refused_saying_how_to_enable_them(model_dir, world, tmp_path):
    out = tmp_path / "by-features"
    build_index(model_dir, out, str(world / "features.tsv"), str(world / "predictions.tsv"), config="tiny",
                image_dir=str(world / "images"))
    client = TestClient(load_service(str(out)), base_url="http://127.0.0.1")
    assert client.get("/api/health").json()["upload"] is False
    r = client.post(UPLOAD, content=png(world, "000000"))
    says = r.json()["detail"]
    assert r.status_code == 400 and "records no detector" in says and "--detector FILE" in says
    assert client.get("/api/similar", params={"image": "000000"}).status_code == 200  # needs no detector
    given = TestClient(load_service(str(out), detector=str(world / "detector.safetensors")),
                       base_url="http://127.0.0.1")
    assert given.get("/api/health").json()["upload"] is True
    got = given.post(UPLOAD, params={"top": 3}, content=png(world, "000000"))
    assert got.status_code == 200 and got.json()["results"][0]["id"] == "000000"


def test_a_detector_that_does_not_fit_the_model_is_refused(index, index_dir, world, tmp_path, capsys):
    other = DemoDetector(["circle"], ["red"], ["small"], feat_dim=8)
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="14-wide region features, the model of the index takes"):
        index_detector(index, str(tmp_path / "other.safetensors"))
    (tmp_path / "notes.txt").write_text("not weights")
    for argv, says in ((["--detector", str(tmp_path / "gone.safetensors")], "detector weights not found"),
                       (["--detector", str(tmp_path / "notes.txt")], "not a demo detector's safetensors file"),
                       (["--detector", str(tmp_path / "other.safetensors")], "14-wide region features"),
                       (["--detector-kind", "frcnn"], "give --detector too")):
        with pytest.raises(SystemExit) as stop:
            main(["serve", "--index", str(index_dir), "--port", "0", *argv])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith("mvptr serve: ") and says in err and len(err.splitlines()) == 1


def test_an_index_whose_detector_is_gone_still_serves_text_search(model_dir, world, tmp_path):
    detector = tmp_path / "detector.safetensors"
    shutil.copy(world / "detector.safetensors", detector)
    out = tmp_path / "index"
    images = tmp_path / "images"
    images.mkdir()
    for image_id in ("000000", "000001", "000002"):
        shutil.copy(world / "images" / f"{image_id}.png", images)
    build_index(model_dir, out, config="tiny", images=str(images), detector=str(detector))
    detector.unlink()
    client = TestClient(load_service(str(out)), base_url="http://127.0.0.1")
    assert client.get("/api/health").json()["upload"] is False
    r = client.post(UPLOAD, content=png(world, "000000"))
    assert r.status_code == 400 and f"{detector} is gone" in r.json()["detail"]
    assert client.get("/api/search", params={"q": "a red circle", "rerank": 0}).status_code == 200


# ----------------------------------------------------------------------------- the page in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SHOWS = ("(want) => JSON.stringify(Array.from(document.querySelectorAll('#results .result'), "
         "(c) => c.dataset.id)) === JSON.stringify(want)")  # the page shows these results, in this order
FITS = "() => document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture
def live_server(app):
    pytest.importorskip("uvicorn")
    with live(app) as port:
        yield f"http://127.0.0.1:{port}"


def test_search_by_example_in_a_browser(live_server, index, world, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (Debian/Ubuntu), then rerun")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (mvptr[test])")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            errors: list[str] = []
            for width in (1280, 390):
                page = browser.new_page(viewport={"width": width, "height": 860})
                page.on("pageerror", lambda err: errors.append(str(err)))
                check_the_page(page, live_server, index, world, tmp_path, width)
                assert not errors, errors
        finally:
            browser.close()


def check_the_page(page, server, index, world, tmp_path, width):
    page.goto(f"{server}/?{urlencode({'q': 'a red circle left of a blue square'})}")
    page.wait_for_selector("#results .result")
    page.wait_for_selector("#upload", state="visible")  # the index knows its detector
    # more like this on the second card: the images nearest it lead, itself left out, and the URL says so
    clicked = page.locator("#results .result").nth(1).get_attribute("data-id")
    page.locator("#results .result").nth(1).locator(".like").click()
    page.wait_for_function(SHOWS, arg=nearest(index, clicked, 10))
    assert page.evaluate("new URLSearchParams(location.search).get('like')") == clicked
    assert clicked in page.locator("#example-text").inner_text() and page.locator("#example-image").is_visible()
    assert page.locator("#results .result .scores").first.inner_text().startswith("cosine ")
    assert page.evaluate(FITS)
    page.go_back()  # the sentence's results again
    page.wait_for_function("() => new URLSearchParams(location.search).get('q') !== null")
    page.wait_for_function("() => document.querySelector('#example').hidden")
    page.goto(f"{server}/?{urlencode({'like': clicked})}")  # a shared link
    page.wait_for_function(SHOWS, arg=nearest(index, clicked, 10))
    # an uploaded picture of the demo world: the image it is leads the results
    image = index.ids[9]
    page.set_input_files("#file", str(world / "images" / f"{image}.png"))
    page.wait_for_function("(id) => document.querySelector('#results .result')?.dataset.id === id", arg=image)
    assert "the detector found" in page.locator("#example-text").inner_text()
    assert page.evaluate("location.search") == ""  # an upload is not in the URL
    assert page.evaluate(FITS)
    page.screenshot(path=str(tmp_path / f"upload-{width}.png"), full_page=True)
    # a file that is no image: a clean message, no results
    (tmp_path / "notes.png").write_text("these are notes, not a picture")
    page.set_input_files("#file", str(tmp_path / "notes.png"))
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('failed')")
    status = page.locator("#status").inner_text()
    assert status.startswith("search by notes.png failed: the upload is not an image"), status
    assert page.locator("#results .result").count() == 0 and page.locator("#example").is_hidden()
    # a card clicked after an example search: shown large, nothing to ground
    page.set_input_files("#file", str(world / "images" / f"{image}.png"))
    page.wait_for_selector("#results .result")
    page.locator("#results .result .open").first.click()
    page.wait_for_selector("#detail", state="visible")
    assert "search with a sentence" in page.locator("#ground-status").inner_text()
    assert page.evaluate(FITS) and page.locator("#detail").bounding_box()["width"] <= width
