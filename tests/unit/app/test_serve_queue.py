"""`mvptr serve` under load: a bounded queue in front of the model (503 when full), requests
whose clients have gone dropped before they run, /api/health never behind the model, and
concurrent searches batched into one forward pass with the answers each would get alone."""

import http.client
import socket
import threading
import time
from urllib.parse import urlencode

import pytest

from mvptr.app.search import build_index

pytestmark = pytest.mark.slow  # builds a model and an index, starts servers

fastapi = pytest.importorskip("fastapi", reason="needs mvptr[serve]: pip install -e '.[serve]'")
from mvptr.app.serve import load_service  # noqa: E402
from serve_helpers import live, tiny_model  # noqa: E402

QUERY = "a red circle left of a blue square"
SLOW = 0.3  # seconds the model takes per text encoding in these tests


@pytest.fixture(scope="module")
def index_dir(world, world_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("queue")
    out = root / "index"
    build_index(tiny_model(world_args, root), out, str(world / "features.tsv"), str(world / "predictions.tsv"),
                config="tiny", image_dir=str(world / "images"))
    return out


def slow_app(index_dir, **settings):
    """A service whose model takes SLOW seconds to encode texts."""
    app = load_service(str(index_dir), **settings)
    model = app.state.index.model
    encode = model.encode_texts

    def slow(*args, **kwargs):
        time.sleep(SLOW)
        return encode(*args, **kwargs)

    model.encode_texts = slow
    return app


def search_path(q=QUERY, top=3, rerank=4) -> str:
    return "/api/search?" + urlencode({"q": q, "top": top, "rerank": rerank})


def get(port, path, timeout=60) -> tuple[int, dict, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body, time.perf_counter() - t


def abandon(port, path) -> None:
    """Send a request and close the connection without waiting for the answer."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def test_abandoned_requests_do_not_keep_the_model_busy(index_dir):
    app = slow_app(index_dir, queue=64)
    with live(app) as port:
        assert get(port, search_path())[0] == 200
        for i in range(30):  # 30 x 0.3 s of work if it were all done
            abandon(port, search_path(f"a shape number {i}"))
        time.sleep(0.2)
        status, _, _, took = get(port, search_path())
        assert status == 200 and took < 2.0, took
    assert app.state.queue.dropped >= 25


def test_a_full_queue_is_a_503_with_retry_after(index_dir):
    app = slow_app(index_dir, queue=2, max_batch=1)
    results = []

    def client(i):
        results.append(get(port, search_path(f"a circle {i}")))

    with live(app) as port:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert get(port, search_path())[0] == 200  # and it serves again once the queue has room
    busy = [r for r in results if r[0] == 503]
    assert busy and all(r[1].get("retry-after") == "1" and r[1]["x-content-type-options"] == "nosniff" for r in busy)
    assert all(r[3] < 1.0 for r in busy)  # refused at once, not after waiting
    assert sum(r[0] == 200 for r in results) >= 2 and {r[0] for r in results} <= {200, 503}


def test_health_answers_while_the_model_is_busy(index_dir):
    app = slow_app(index_dir, queue=256, max_batch=1)
    stop = threading.Event()

    def client():
        while not stop.is_set():
            get(port, search_path())

    with live(app) as port:
        threads = [threading.Thread(target=client, daemon=True) for _ in range(60)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every client waits for the model
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        took = []
        for _ in range(5):
            t = time.perf_counter()
            conn.request("GET", "/api/health")
            r = conn.getresponse()
            assert r.status == 200 and b'"queued"' in r.read()
            took.append(time.perf_counter() - t)
        stop.set()
        for t in threads:
            t.join(30)
    assert sorted(took)[2] < 0.1, took  # the median; a loaded 2-core machine can delay any one request
