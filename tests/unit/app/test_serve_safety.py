"""`mvptr serve` serves only image files, only under the host names it is reached by, with
the page's security headers on every response, and keeps paths and queries to itself."""

import http.client
import json
import logging
import os
import shutil
import socket
import threading
import time

import pytest

from mvptr.app.search import build_index
from mvptr.cli import main, parse

pytestmark = pytest.mark.slow  # builds a model and an index

fastapi = pytest.importorskip("fastapi", reason="needs mvptr[serve]: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from mvptr.app.serve import HideQueries, allowed_hosts, load_service, make_server  # noqa: E402
from mvptr.app.server import MAX_BODY  # noqa: E402
from serve_helpers import tiny_model  # noqa: E402

HTML = b"<!doctype html><script>alert(document.cookie)</script>"
QUERY = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def setup(world, world_args, tmp_path_factory):
    """An index over a copy of the world's images where some image files are not what their
    names say: links to a text file and to HTML, inside the directory and out, HTML bytes under
    a .jpg name, and a link to an image inside the directory (which is fine)."""
    root = tmp_path_factory.mktemp("safety")
    model_dir = tiny_model(world_args, root)
    images = root / "images"
    shutil.copytree(world / "images", images)
    ids = sorted(p.stem for p in images.glob("*.png"))
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the password is swordfish\n")
    (outside / "page.html").write_bytes(HTML)
    (images / "inside.html").write_bytes(HTML)
    (images / "notes.txt").write_text("private notes\n")
    bad = {ids[0]: outside / "secret.txt", ids[1]: outside / "page.html", ids[2]: images / "inside.html",
           ids[3]: images / "notes.txt"}
    for image_id, target in bad.items():
        (images / f"{image_id}.png").unlink()
        os.symlink(target, images / f"{image_id}.png")
    (images / f"{ids[4]}.png").unlink()
    (images / f"{ids[4]}.jpg").write_bytes(HTML)  # a .jpg name holding HTML
    (images / f"{ids[5]}.png").rename(images / "real.png")
    os.symlink(images / "real.png", images / f"{ids[5]}.png")  # a link to an image inside: served
    out = root / "index"
    build_index(model_dir, out, str(world / "features.tsv"), str(world / "predictions.tsv"), config="tiny",
                image_dir=str(images))
    return {"out": out, "ids": ids, "images": images, "outside": outside}


@pytest.fixture(scope="module")
def client(setup):
    return TestClient(load_service(str(setup["out"])), base_url="http://127.0.0.1", raise_server_exceptions=False)


def test_only_regular_image_files_inside_the_directory_are_indexed_and_served(setup, client):
    ids, files = setup["ids"], json.loads((setup["out"] / "files.json").read_text())
    for image_id in ids[:5]:
        assert image_id not in files
        r = client.get(f"/api/images/{image_id}")
        assert r.status_code == 404 and b"swordfish" not in r.content and b"<script>" not in r.content
        assert not r.headers["content-type"].startswith(("text/html", "text/plain"))
    linked = client.get(f"/api/images/{ids[5]}")
    assert linked.status_code == 200 and linked.headers["content-type"] == "image/png"
    assert linked.content == (setup["images"] / "real.png").read_bytes()
    normal = client.get(f"/api/images/{ids[6]}")
    assert normal.status_code == 200 and normal.headers["content-type"] == "image/png"
    assert normal.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_changed_after_indexing_is_checked_again(setup, tmp_path, caplog):
    out = tmp_path / "index"
    shutil.copytree(setup["out"], out)
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images, symlinks=True)
    files = json.loads((out / "files.json").read_text())
    moved = {k: str(images / os.path.basename(v)) for k, v in files.items()}
    (out / "files.json").write_text(json.dumps(moved))
    meta = json.loads((out / "index.json").read_text())
    meta["stores"][0]["image_dir"] = str(images)
    (out / "index.json").write_text(json.dumps(meta))
    c = TestClient(load_service(str(out)), base_url="http://127.0.0.1")
    a, b, d, e = (i for i in setup["ids"][6:10])
    assert all(c.get(f"/api/images/{i}").status_code == 200 for i in (a, b, d, e))
    (images / f"{a}.png").write_bytes(HTML)  # now HTML under the indexed name
    (images / f"{b}.png").unlink()
    os.symlink(setup["outside"] / "secret.txt", images / f"{b}.png")  # now a link out of the directory
    (images / f"{d}.png").unlink()
    os.symlink(setup["images"] / f"{setup['ids'][8]}.png", images / f"{d}.png")  # an image, but outside
    (images / f"{e}.png").unlink()
    os.mkfifo(images / f"{e}.png")  # no regular file (reading it would block)
    with caplog.at_level(logging.WARNING, logger="mvptr.serve"):
        for _ in range(3):
            for i in (a, b, d, e):
                r = c.get(f"/api/images/{i}")
                assert r.status_code == 404 and b"swordfish" not in r.content and b"<script>" not in r.content
    warned = [r for r in caplog.records if r.name == "mvptr.serve" and "answered 404" in r.getMessage()]
    assert len(warned) == 4  # once per image, not once per request


def test_every_response_carries_the_security_headers(setup, client, monkeypatch):
    index = client.app.state.index
    responses = {
        200: client.get("/api/health"),
        404: client.get("/api/images/nope"),
        413: client.post("/api/answer", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"}),
        422: client.get("/api/search", params={"q": ""}),
    }
    page = client.get("/")
    image = client.get(f"/api/images/{setup['ids'][6]}")
    script = client.get("/static/app.js")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(index, "query", broken)
    monkeypatch.setattr(index, "query_batch", broken, raising=False)
    responses[500] = client.get("/api/search", params={"q": QUERY})
    for status, r in [*responses.items(), (200, page), (200, image), (200, script)]:
        assert r.status_code == status, r.text
        assert r.headers["x-content-type-options"] == "nosniff", status
        assert r.headers["content-security-policy"].startswith("default-src 'self'"), status


def test_no_docs_page_whose_assets_come_from_a_cdn(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


# ----------------------------------------------------------------------------- host names, paths, queries

def test_only_the_host_names_it_serves_are_answered(setup, client):
    app = client.app
    for base in ("http://127.0.0.1", "http://localhost:8000", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/api/health").status_code == 200, base
    for base in ("http://evil.example", "http://127.0.0.1.evil.example", "http://testserver"):
        r = TestClient(app, base_url=base).get("/api/health")  # a page of another site, through DNS rebinding
        assert r.status_code == 400 and r.headers["x-content-type-options"] == "nosniff", base
    served = load_service(str(setup["out"]), hosts=allowed_hosts("0.0.0.0", ["search.example.org"]))
    assert TestClient(served, base_url="http://search.example.org").get("/api/health").status_code == 200
    assert TestClient(served, base_url="http://other.example.org").get("/api/health").status_code == 400


def test_the_allowed_host_names_follow_the_bind_address():
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("::1") == allowed_hosts("localhost") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("0.0.0.0", ["a.example", "*.b.example"]) == ["127.0.0.1", "localhost", "[::1]",
                                                                       "a.example", "*.b.example"]
    assert allowed_hosts("192.168.1.5") == ["192.168.1.5"]
    assert allowed_hosts("fe80::1", ["Host.Example"]) == ["[fe80::1]", "host.example"]
    for bad in ("http://a.example", "a.example:80", "a.example/x", "a.*.example", ""):
        with pytest.raises(ValueError, match="--allowed-host"):
            allowed_hosts("127.0.0.1", [bad])


def test_a_bad_allowed_host_is_one_line_and_exit_2(setup, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--index", str(setup["out"]), "--allowed-host", "http://x.example"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("mvptr serve: --allowed-host") and len(err.splitlines()) == 1
    args = parse(["serve", "--index", "i", "--allowed-host", "a.example", "--allowed-host", "b.example"])
    assert args.allowed_host == ["a.example", "b.example"] and args.log_queries is False
    assert parse(["serve", "--index", "i", "--log-queries"]).log_queries is True


def test_health_tells_no_absolute_path(setup, client):
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["images"] > 0
    assert str(setup["out"].parent) not in health.text and '"/' not in health.text


def test_a_422_does_not_echo_the_query(client):
    secret = "my private sentence " * 500
    for r in (client.get("/api/search", params={"q": secret}),
              client.get("/api/search", params={"q": "fine", "top": secret}),
              client.post("/api/answer", json={"image": "x", "question": secret})):
        assert r.status_code == 422 and "private" not in r.text and len(r.content) < 1000
        assert r.json()["detail"][0]["msg"]
    r = client.get("/api/images/" + "p" * 5000)
    assert r.status_code == 404 and len(r.content) < 1000


def test_the_access_log_leaves_out_query_strings_unless_asked(setup, client):
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/api/search?q=my+secret&top=3", "1.1", 200), None)
    assert HideQueries().filter(record) and "secret" not in record.getMessage() and "/api/search" in record.getMessage()
    access = logging.getLogger("uvicorn.access")
    lines = []

    class Keep(logging.Handler):
        def emit(self, r):
            lines.append(r.getMessage())

    keep = Keep()
    try:
        for log_queries in (False, True):
            server = make_server(client.app, log_level="info", log_queries=log_queries)
            access.addHandler(keep)  # after uvicorn has configured its loggers
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            deadline = time.time() + 30
            while not server.started and time.time() < deadline:
                time.sleep(0.05)
            conn = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1], timeout=30)
            conn.request("GET", "/api/search?q=my+secret+words&top=2&rerank=0")
            assert conn.getresponse().read()
            server.should_exit = True
            thread.join(10)
            sock.close()
            mine = [line for line in lines if "/api/search" in line]
            assert mine and ("secret" in mine[-1]) == log_queries, mine
    finally:
        access.removeHandler(keep)
        for f in [f for f in access.filters if isinstance(f, HideQueries)]:
            access.removeFilter(f)
