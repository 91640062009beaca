"""Latency of `mvptr serve`'s /api/search under load: 1 and 8 concurrent clients on loopback.

    python benchmarks/serve_load.py --index runs/demo/index --top 10 --rerank 20

Starts `mvptr serve` on 127.0.0.1 (a free port) in its own process, waits for /api/health,
sends a few untimed requests, then for each client count sends at most ``--requests``
requests in all, for at most ``--seconds``, each client one request at a time on its own
keep-alive connection. Queries are sentences of the demo world's kind, in a fixed order.
Prints p50/p95/max latency, requests per second and the server's own split of the time
(text encoding, coarse stage, re-ranking), and exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "grey", "black", "brown", "teal"]
SHAPES = ["circle", "square", "triangle", "star", "heart", "diamond", "rectangle"]
RELATIONS = ["left of", "right of", "above", "below", "next to"]


def queries(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"a {rng.choice(['small', 'large', 'big'])} {rng.choice(COLORS)} {rng.choice(SHAPES)} "
            f"{rng.choice(RELATIONS)} a {rng.choice(COLORS)} {rng.choice(SHAPES)}" for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def wait_ready(port: int, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            if get(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "/api/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer /api/health within {timeout:.0f} s")


def load(port: int, clients: int, sentences: list[str], top: int, rerank: int, max_requests: int,
         seconds: float) -> dict:
    lock, taken = threading.Lock(), [0]
    latencies, timings, errors = [], [], []
    deadline = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < deadline:
            with lock:
                if taken[0] >= max_requests:
                    return
                i = taken[0]
                taken[0] += 1
            path = "/api/search?" + urlencode({"q": sentences[i % len(sentences)], "top": top, "rerank": rerank})
            t = time.perf_counter()
            try:
                status, body = get(conn, path)
            except (OSError, http.client.HTTPException) as err:
                errors.append(repr(err))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            ms = 1000 * (time.perf_counter() - t)
            if status != 200:
                errors.append(f"{status}: {body[:200]!r}")
                continue
            result = json.loads(body)
            if len(result["results"]) != top:
                errors.append(f"{len(result['results'])} results, not {top}")
            with lock:
                latencies.append(ms)
                timings.append(result["timing"])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 1) if latencies else None

    def mean(key):
        values = [t[key] for t in timings if key in t]
        return round(sum(values) / len(values), 1) if values else None

    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(wall, 1), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": pct(50), "p95_ms": pct(95), "max_ms": round(latencies[-1], 1) if latencies else None,
            "server_ms": {k: mean(k) for k in ("encode_ms", "coarse_ms", "rerank_ms", "total_ms")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default="runs/demo/index")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--rerank", type=int, default=20)
    p.add_argument("--requests", type=int, default=200, help="requests per client count, at most")
    p.add_argument("--seconds", type=float, default=120, help="seconds per client count, at most")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    port = free_port()
    command = [sys.executable, "-m", "mvptr", "serve", "--index", args.index, "--port", str(port),
               "--log-level", "warning"]
    server = subprocess.Popen(command)
    try:
        t = time.perf_counter()
        wait_ready(port, server, args.startup_timeout)
        startup = time.perf_counter() - t
        sentences = queries(1000)
        warm = load(port, 1, sentences[::-1], args.top, args.rerank, args.warmup, args.seconds)
        result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                  "index": str(Path(args.index).resolve()), "cpus": os.cpu_count(),
                  "load_average": os.getloadavg(), "startup_s": round(startup, 1), "top": args.top,
                  "rerank": args.rerank, "warmup_errors": warm["errors"],
                  "runs": [load(port, c, sentences, args.top, args.rerank, args.requests, args.seconds)
                           for c in args.clients]}
        result["load_average_after"] = os.getloadavg()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if warm["errors"] or any(r["errors"] for r in result["runs"]):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
