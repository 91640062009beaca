"""The HTTP API and the page over a search index (``mvptr serve``; needs ``mvptr[serve]``).

    GET  /                          the page (static/: index.html, app.js, style.css)
    GET  /api/health                size of the index, its coarse stage and that stage's measured
                                    recall@10, whether questions are answered
    GET  /api/search?q=&top=&rerank=  image ids with their coarse and re-ranked scores, the objects
                                    detected in each image, and timings
    GET  /api/similar?image=&top=   the images nearest an indexed one by their stored embeddings ("more
                                    like this"; the image itself left out)
    POST /api/similar/upload?top=   the same for an uploaded image (the request body: its bytes), its regions
                                    found by the index's detector (:mod:`.examples`)
    GET  /api/images/{id}           the image file the index knows for the id
    GET  /api/ground?image=&q=      each phrase of q with the region it grounds to (paper Figure 5)
    POST /api/answer                {"image", "question", "top"}: a VQA head's likeliest answers
    GET  /openapi.json              the OpenAPI description (no /docs page: its assets come from a CDN)

Safe by default: image ids are looked up in the index, never joined to a path, and only
regular files inside the image directory whose bytes are an image are served (:mod:`.images`);
every response carries a Content-Security-Policy and ``nosniff``; queries,
``top`` and ``rerank`` are bounded (422 with a message); request bodies are limited (413; an
upload to :data:`.examples.MAX_UPLOAD`, its bytes checked to be an image's, 415 otherwise).
The model runs behind a bounded queue (:mod:`.worker`: a full queue is a 503 with
``Retry-After``, a request whose client has gone is dropped unrun, concurrent searches are
batched), ``/api/health`` never waits for it, and an error inside a request is answered
with a 500 while the server goes on.
"""

from __future__ import annotations

import logging
import math
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
from .examples import ENABLE, MAX_UPLOAD, BadUpload, check_upload, like, like_upload
from .images import read_image
from .middleware import MAX_BODY, SECURITY_HEADERS, BodyLimit, SecurityHeaders
from .search import MAX_RERANK, MAX_TOP, SearchIndex  # noqa: F401  (the limits of the API, here too)
from .worker import ClientGone, ModelQueue, QueueFull

STATIC = Path(__file__).parent / "static"
MAX_QUERY = 300  # characters of a query or a question
MAX_ANSWERS = 20
MAX_OBJECTS = 8  # names of detected objects given with each search result, at most
QUEUE = 32  # requests waiting for the model, at most; more are answered 503
WINDOW_MS = 5.0  # a batch of searches gathers for this long
MAX_BATCH = 16  # searches in one batch, at most
RETRY_AFTER = "1"  # seconds, in a 503's Retry-After
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")  # the names this machine reaches itself by
UPLOAD = "/api/similar/upload"
IMAGE_BODY = {"required": True, "description": "the image file's bytes (PNG, JPEG, GIF, WebP or BMP)",
              "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
log = logging.getLogger("mvptr.serve")


class AnswerRequest(BaseModel):
    image: str = Field(min_length=1, max_length=MAX_QUERY, description="an image id of the index")
    question: str = Field(min_length=1, max_length=MAX_QUERY)
    top: int = Field(3, ge=1, le=MAX_ANSWERS, description="how many answers")


def _number(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _short(error: dict) -> dict:
    """A validation error without the input it refused (which may be long, or private)."""
    return {"loc": list(error.get("loc", ()))[:4], "msg": str(error.get("msg", ""))[:200], "type": error.get("type")}


def objects(regions: dict, most: int = MAX_OBJECTS) -> list[str]:
    """The names of the objects the detector found in an image (its regions' classes), each
    once, in the store's order, at most ``most``: what an index knows
    of an image besides its features (it holds no captions)."""
    return list(dict.fromkeys(str(c) for c in regions.get("classes", ())))[:most]


def create_app(index: SearchIndex, vqa: Model | None = None, hosts: Sequence[str] = LOOPBACK, *, workers: int = 1,
               queue: int = QUEUE, window_ms: float = WINDOW_MS, max_batch: int = MAX_BATCH, detector=None,
               no_detector: str = "") -> FastAPI:
    """The service over ``index``; questions are answered by ``vqa``, or by the index's own
    model when it has a VQA head. Requests whose ``Host`` is none of ``hosts`` are refused
    (400): a page of another site cannot reach the service through a name it controls (DNS
    rebinding). The model runs in ``workers`` threads behind a queue of at most ``queue``
    requests (:mod:`.worker`); searches that wait together are run as one batch of up to
    ``max_batch``, gathered for ``window_ms``. Uploaded images are searched with when there is a
    ``detector`` (:mod:`.examples`); ``no_detector`` says why there is none."""
    if vqa is None and getattr(getattr(index.model.model, "task_head", None), "answers", None) is not None:
        vqa = index.model
    app = FastAPI(title="mvptr search", version=index.meta["format"], docs_url=None, redoc_url=None,
                  description="Search an image collection with a sentence; ground its phrases; ask questions.")
    app.add_middleware(BodyLimit, paths={UPLOAD: MAX_UPLOAD})
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    app.add_middleware(SecurityHeaders)  # outside the others: their 400 and 413 get the headers too
    app.state.index, app.state.vqa = index, vqa
    _add_error_handlers(app)
    _add_page(app)
    model = app.state.queue = ModelQueue(_runners(index, vqa, detector), workers, queue, window_ms / 1000, max_batch)
    _add_health(app, index, vqa, model, detector is not None)
    _add_images(app, index)
    on_model = _on_model(model)
    _add_examples(app, index, on_model, no_detector if detector is None else None)

    @app.get("/api/search")
    async def search(request: Request,
                     q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="the sentence")],
               top: Annotated[int, Query(ge=1, le=MAX_TOP, description="images to return")] = 10,
               rerank: Annotated[int, Query(ge=0, le=MAX_RERANK,
                                            description="candidates the multimodal encoder re-ranks "
                                                        "(at least top; 0: coarse order)")] = 20):
        if not q.strip():
            raise HTTPException(422, "the query is empty")
        timing: dict = {}
        start = time.perf_counter()
        hits = await on_model(request, "search", q, top, rerank, "itm+sim" if rerank else "uni", timing)
        if isinstance(hits, JSONResponse):
            return hits
        timing["total_ms"] = round(1000 * (time.perf_counter() - start), 2)
        reranked = min(max(top, rerank), len(index.ids)) if rerank else 0
        return {"query": q, "top": top, "rerank": rerank, "reranked": reranked, "images": len(index.ids),
                "timing": timing, "results": _rows(index, hits, rerank)}

    @app.get("/api/ground")
    async def ground(request: Request,
                     image: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="an image id")],
               q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="the sentence")]):
        start = time.perf_counter()
        done = await on_model(request, "ground", _known(index, image), q)
        if isinstance(done, JSONResponse):
            return done
        item, grounded = done
        return {"image": image, "width": float(item["width"]), "height": float(item["height"]),
                "regions": len(item["boxes"]), "ms": round(1000 * (time.perf_counter() - start), 2),
                "phrases": [{"phrase": g.phrase, "region": g.region, "box": [round(v, 2) for v in g.box],
                             "score": _number(g.similarity)} for g in grounded]}

    @app.post("/api/answer")
    async def answer(request: AnswerRequest, http: Request):
        if vqa is None:
            raise HTTPException(501, "this server answers no questions: start it with --vqa-model DIR, "
                                     "a model fine-tuned with `mvptr finetune vqa`")
        start = time.perf_counter()
        answers = await on_model(http, "answer", _known(index, request.image), request.question, request.top)
        if isinstance(answers, JSONResponse):
            return answers
        return {"image": request.image, "question": request.question,
                "ms": round(1000 * (time.perf_counter() - start), 2),
                "answers": [{"answer": a, "probability": round(p, 6)} for a, p in answers]}

    return app


def _image_url(index: SearchIndex, image_id: str) -> str | None:
    return f"/api/images/{quote(image_id, safe='')}" if image_id in index.files else None


def _rows(index: SearchIndex, hits: list, reranked: bool) -> list[dict]:
    """The results of a search: each hit with its rank, scores, image file and objects."""
    return [{"rank": r, "id": h.image_id, "coarse": round(h.similarity, 6),
             "score": round(h.score, 6) if reranked else None, "image": _image_url(index, h.image_id),
             "objects": names} for r, (h, names) in enumerate(hits, 1)]


def _add_examples(app: FastAPI, index: SearchIndex, on_model, no_detector: str | None) -> None:
    """Search by example: an indexed image ("more like this"), or an uploaded one when there is a
    detector (``no_detector``: why there is none, else None)."""

    @app.get("/api/similar")
    async def similar(request: Request,
                      image: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="an image id")],
                      top: Annotated[int, Query(ge=1, le=MAX_TOP, description="images to return")] = 10):
        timing: dict = {}
        start = time.perf_counter()
        hits = await on_model(request, "similar", _known(index, image), top, timing)
        if isinstance(hits, JSONResponse):
            return hits
        timing["total_ms"] = round(1000 * (time.perf_counter() - start), 2)
        return {"like": image, "like_image": _image_url(index, image), "top": top, "rerank": 0, "reranked": 0,
                "images": len(index.ids),
                "timing": timing, "results": _rows(index, hits, False)}

    @app.post(UPLOAD, openapi_extra={"requestBody": IMAGE_BODY})
    async def upload(request: Request,
                     top: Annotated[int, Query(ge=1, le=MAX_TOP, description="images to return")] = 10):
        if no_detector is not None:
            raise HTTPException(400, f"this server does not search by uploaded images: {no_detector}; {ENABLE}")
        data = await request.body()
        timing: dict = {}
        start = time.perf_counter()
        try:  # no image by its bytes: refused before it waits for the model
            done = await on_model(request, "upload", check_upload(data), top, timing)
        except BadUpload as err:
            raise HTTPException(err.status, str(err)) from None
        if isinstance(done, JSONResponse):
            return done
        names, hits = done
        timing["total_ms"] = round(1000 * (time.perf_counter() - start), 2)
        return {"upload": len(data), "objects": names, "top": top, "rerank": 0, "reranked": 0,
                "images": len(index.ids), "timing": timing, "results": _rows(index, hits, False)}


def _known(index: SearchIndex, image_id: str) -> str:
    """``image_id``, or 404 when the index does not hold it."""
    if image_id not in index.store:
        raise HTTPException(404, f"no image {image_id!r} in the index")
    return image_id


def _on_model(model: ModelQueue):
    """A request's run on the model through its queue: 503 when the queue is full, and nothing
    run for a client that has gone."""

    async def on_model(request: Request, kind: str, *args):
        try:
            return await model.run(kind, args, request.receive)
        except QueueFull as err:
            raise HTTPException(503, f"the server is busy ({err}); retry",
                                headers={"Retry-After": RETRY_AFTER}) from None
        except ClientGone:
            return JSONResponse({"detail": "client closed the request"}, status_code=499)

    return on_model


def _runners(index: SearchIndex, vqa: Model | None, detector) -> dict:
    """What the model queue runs for each kind of request, a batch of jobs at a time: one pass for
    the texts and one to re-rank; the objects of each hit and the regions to ground are read from
    the store by the worker, off the event loop."""

    def named(hits):
        return [(h, objects(index.store[h.image_id])) for h in hits]

    def upload(data, top, timing):
        regions, hits = like_upload(index, detector, data, top, timing)
        return objects({"classes": regions.tags}), named(hits)

    return {"search": lambda jobs: [named(hits) for hits in index.query_batch(jobs)],
            "similar": lambda jobs: [named(like(index, i, top, timing)) for i, top, timing in jobs],
            "upload": lambda jobs: [upload(*job) for job in jobs],
            "ground": lambda jobs: [(index.store[i], index.model.ground(index.store[i], q)) for i, q in jobs],
            "answer": lambda jobs: [vqa.answer(index.store[i], q, top) for i, q, top in jobs]}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        # answered outside the middleware (Starlette's ServerErrorMiddleware): the headers are given here
        return JSONResponse({"detail": f"internal error ({type(err).__name__})"}, status_code=500,
                            headers=SECURITY_HEADERS)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return JSONResponse({"detail": [_short(e) for e in err.errors()[:10]]}, status_code=422)


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_health(app: FastAPI, index: SearchIndex, vqa: Model | None, model: ModelQueue, upload: bool) -> None:
    @app.get("/api/health")
    async def health():  # on the event loop, never behind the model
        return {"status": "ok", "images": len(index.ids), "image_files": len(index.files),
                "coarse": index.coarse.kind, "recall": index.recall,
                "model": Path(index.meta["model"]).name,  # no absolute path
                "vqa": vqa is not None, "upload": upload,
                "limits": {"query": MAX_QUERY, "top": MAX_TOP, "rerank": MAX_RERANK, "answers": MAX_ANSWERS,
                           "body": MAX_BODY, "upload": MAX_UPLOAD, "queue": model.capacity},
                "queued": len(model)}


def _add_images(app: FastAPI, index: SearchIndex) -> None:
    refused: set[str] = set()  # image ids whose file was refused (logged once each)

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
