"""The HTTP API and the page over a search index (``mvptr serve``; needs ``mvptr[serve]``).

    GET  /                          the page (static/: index.html, app.js, style.css)
    GET  /api/health                size of the index, its coarse stage, whether questions are answered
    GET  /api/search?q=&top=&rerank=  image ids with their coarse and re-ranked scores, and timings
    GET  /api/images/{id}           the image file the index knows for the id
    GET  /api/ground?image=&q=      each phrase of q with the region it grounds to (paper Figure 5)
    POST /api/answer                {"image", "question", "top"}: a VQA head's likeliest answers
    GET  /openapi.json              the OpenAPI description (no /docs page: its assets come from a CDN)

Safe by default: image ids are looked up in the index, never joined to a path, and only
regular files inside the image directory whose bytes are an image are served (:mod:`.images`);
every response carries a Content-Security-Policy and ``nosniff``; queries,
``top`` and ``rerank`` are bounded (422 with a message); request bodies are limited (413).
The model serves one request at a time (a fast tokenizer is not thread-safe), and an
error inside a request is answered with a 500 while the server goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .api import Model
from .images import read_image
from .middleware import MAX_BODY, SECURITY_HEADERS, BodyLimit, SecurityHeaders
from .search import SearchIndex

STATIC = Path(__file__).parent / "static"
MAX_QUERY = 300  # characters of a query or a question
MAX_TOP = 100
MAX_RERANK = 200
MAX_ANSWERS = 20
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")  # the names this machine reaches itself by
log = logging.getLogger("mvptr.serve")


class AnswerRequest(BaseModel):
    image: str = Field(min_length=1, max_length=MAX_QUERY, description="an image id of the index")
    question: str = Field(min_length=1, max_length=MAX_QUERY)
    top: int = Field(3, ge=1, le=MAX_ANSWERS, description="how many answers")


class TicketLock:
    """A lock granted in the order it was asked for (``threading.Lock`` promises no order), so
    that a request waits for those ahead of it only."""

    def __init__(self):
        self._cond = threading.Condition()
        self.issued = self._serving = 0

    def __enter__(self):
        with self._cond:
            ticket, self.issued = self.issued, self.issued + 1
            self._cond.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


def _number(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _short(error: dict) -> dict:
    """A validation error without the input it refused (which may be long, or private)."""
    return {"loc": list(error.get("loc", ()))[:4], "msg": str(error.get("msg", ""))[:200], "type": error.get("type")}


def create_app(index: SearchIndex, vqa: Model | None = None, hosts: Sequence[str] = LOOPBACK) -> FastAPI:
    """The service over ``index``; questions are answered by ``vqa``, or by the index's own
    model when it has a VQA head. Requests whose ``Host`` is none of ``hosts`` are refused
    (400): a page of another site cannot reach the service through a name it controls (DNS
    rebinding)."""
    if vqa is None and getattr(getattr(index.model.model, "task_head", None), "answers", None) is not None:
        vqa = index.model
    app = FastAPI(title="mvptr search", version=index.meta["format"], docs_url=None, redoc_url=None,
                  description="Search an image collection with a sentence; ground its phrases; ask questions.")
    app.add_middleware(BodyLimit)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    app.add_middleware(SecurityHeaders)  # outside the others: their 400 and 413 get the headers too
    app.state.index, app.state.vqa = index, vqa
    lock = TicketLock()  # one request at a time uses the models, first come first served
    refused: set[str] = set()  # image ids whose file was refused (logged once each)

    def image_url(image_id: str) -> str | None:
        return f"/api/images/{quote(image_id, safe='')}" if image_id in index.files else None

    def regions(image_id: str) -> dict:
        if image_id not in index.store:
            raise HTTPException(404, f"no image {image_id!r} in the index")
        return index.store[image_id]

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        # answered outside the middleware (Starlette's ServerErrorMiddleware): the headers are given here
        return JSONResponse({"detail": f"internal error ({type(err).__name__})"}, status_code=500,
                            headers=SECURITY_HEADERS)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return JSONResponse({"detail": [_short(e) for e in err.errors()[:10]]}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health():
        return {"status": "ok", "images": len(index.ids), "image_files": len(index.files),
                "coarse": index.coarse.kind, "model": Path(index.meta["model"]).name,  # no absolute path
                "vqa": vqa is not None,
                "limits": {"query": MAX_QUERY, "top": MAX_TOP, "rerank": MAX_RERANK, "answers": MAX_ANSWERS,
                           "body": MAX_BODY}}

    @app.get("/api/search")
    def search(q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="the sentence")],
               top: Annotated[int, Query(ge=1, le=MAX_TOP, description="images to return")] = 10,
               rerank: Annotated[int, Query(ge=0, le=MAX_RERANK,
                                            description="candidates the multimodal encoder re-ranks "
                                                        "(at least top; 0: coarse order)")] = 20):
        if not q.strip():
            raise HTTPException(422, "the query is empty")
        timing: dict = {}
        start = time.perf_counter()
        with lock:
            hits = index.query(q, top, rerank, "itm+sim" if rerank else "uni", timing)
        timing["total_ms"] = round(1000 * (time.perf_counter() - start), 2)
        reranked = min(max(top, rerank), len(index.ids)) if rerank else 0
        return {"query": q, "top": top, "rerank": rerank, "reranked": reranked, "images": len(index.ids),
                "timing": timing,
                "results": [{"rank": r, "id": h.image_id, "coarse": round(h.similarity, 6),
                             "score": round(h.score, 6) if rerank else None, "image": image_url(h.image_id)}
                            for r, h in enumerate(hits, 1)]}

    @app.get("/api/images/{image_id:path}")
    def image(image_id: str):
        path = index.files.get(image_id)  # looked up, never joined to a path
        if path is None:
            raise HTTPException(404, f"no image file for {image_id[:100]!r} in the index")
        found = read_image(path, index.image_dirs)
        if found is None:
            if image_id not in refused:
                refused.add(image_id)
                log.warning("image %r: %s is gone, or no longer a regular image file inside the image directory; "
                            "answered 404", image_id, path)
            raise HTTPException(404, f"the image file of {image_id[:100]!r} is gone")
        data, kind = found
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/ground")
    def ground(image: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="an image id")],
               q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="the sentence")]):
        item = regions(image)
        start = time.perf_counter()
        with lock:
            grounded = index.model.ground(item, q)
        return {"image": image, "width": float(item["width"]), "height": float(item["height"]),
                "regions": len(item["boxes"]), "ms": round(1000 * (time.perf_counter() - start), 2),
                "phrases": [{"phrase": g.phrase, "region": g.region, "box": [round(v, 2) for v in g.box],
                             "score": _number(g.similarity)} for g in grounded]}

    @app.post("/api/answer")
    def answer(request: AnswerRequest):
        if vqa is None:
            raise HTTPException(501, "this server answers no questions: start it with --vqa-model DIR, "
                                     "a model fine-tuned with `mvptr finetune vqa`")
        item = regions(request.image)
        start = time.perf_counter()
        with lock:
            answers = vqa.answer(item, request.question, request.top)
        return {"image": request.image, "question": request.question,
                "ms": round(1000 * (time.perf_counter() - start), 2),
                "answers": [{"answer": a, "probability": round(p, 6)} for a, p in answers]}

    return app
