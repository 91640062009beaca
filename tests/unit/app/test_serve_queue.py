"""`mvptr serve` under load: a bounded queue in front of the model (503 when full), requests
whose clients have gone dropped before they run, /api/health never behind the model, and
concurrent searches batched into one forward pass with the answers each would get alone."""

import http.client
import json
import socket
import threading
import time
from urllib.parse import urlencode

import pytest

from mvptr.app.search import build_index
from mvptr.cli import main

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
    assert app.state.queue.dropped >= 30 - 16  # all but a first batch, taken before the disconnects were seen


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


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_searches_are_batched_with_the_answers_each_gets_alone(index_dir, workers):
    app = load_service(str(index_dir), workers=workers, window_ms=20)
    index = app.state.index
    cases = [(f"a {c} {s} left of a blue square", top, rerank) for c in ("red", "green", "purple")
             for s in ("circle", "star") for top, rerank in ((3, 0), (5, 8), (2, 200))]
    want = {case: [(h.image_id, round(h.score, 4)) for h in index.query(case[0], case[1], case[2],
                                                                        "itm+sim" if case[2] else "uni")]
            for case in cases}
    got, sizes = {}, []

    def client(case):
        status, _, body, _ = get(port, search_path(*case))
        assert status == 200, body
        answer = json.loads(body)
        got[case] = [(r["id"], round(r["score"] if case[2] else r["coarse"], 4)) for r in answer["results"]]
        sizes.append(answer["timing"]["batch"])

    with live(app) as port:
        for _ in range(2):
            threads = [threading.Thread(target=client, args=(case,)) for case in cases]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert got.keys() == want.keys()
            for case, hits in got.items():  # padding in a batch moves scores in the 4th decimal, and near ties
                assert len(hits) == len(want[case])
                assert all(abs(g[1] - w[1]) < 2e-3 for g, w in zip(hits, want[case])), case
                assert sum(g[0] == w[0] for g, w in zip(hits, want[case])) >= len(hits) - 1, case
    assert max(sizes) > 1 and app.state.queue.batches < 2 * len(cases)  # some were run together


def test_the_model_queue_settings_are_checked(index_dir, capsys):
    for flag, value in (("--workers", "0"), ("--queue", "0"), ("--max-batch", "0"), ("--batch-window-ms", "-1")):
        with pytest.raises(SystemExit) as stop:
            main(["serve", "--index", str(index_dir), flag, value])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith(f"mvptr serve: {flag} must be at least") and "\n" not in err
