"""Search by example: the images of an index nearest one of its own images ("more like this"),
or nearest an uploaded image.

An indexed image's global embedding is stored in the index, so "more like this" is the coarse
stage run on it (no model call); the image itself is left out of its answer. An upload is
checked by its bytes (:func:`.images.image_type`: a PNG, JPEG, GIF, WebP or BMP image, never
what its name or type header claims), decoded within :data:`MAX_PIXELS`, its regions found by
the detector the index's features came from (recorded by ``mvptr search build --images
--detector``, or given to ``mvptr serve --detector``), encoded by the image encoder and
searched the same way. Neither is re-ranked: the multimodal encoder scores an image against
a text, and here there is none; the scores are cosines of image embeddings.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import ConfigError
from ..vision.detect import load_detector, region_width
from .images import HEAD, image_type
from .search import Hit, SearchIndex

MAX_UPLOAD = 8 * 1024 * 1024  # bytes of an uploaded image, at most
MAX_PIXELS = 4096 * 4096  # pixels of an uploaded image, at most (a small file can decode to a huge one)
ENABLE = ("start `mvptr serve` with --detector FILE, the detector the index's region features came from "
          "(e.g. data/demo/detector.safetensors), or build the index from image files (--images --detector)")


class BadUpload(ValueError):
    """An upload this server does not search with; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 415):
        super().__init__(message)
        self.status = status


def recorded_detector(meta: dict) -> dict | None:
    """The detector of the latest feature store of an index that records one (``kind``,
    ``weights``), or None."""
    return next((s["detector"] for s in reversed(meta["stores"]) if s.get("detector")), None)


def index_detector(index: SearchIndex, weights: str | None = None, kind: str = "demo"):
    """The detector that uploads are searched with, and why there is none when there is none:
    ``weights`` (of a ``kind`` detector) when given, else the one the index records. A given
    detector that cannot be loaded, or whose region features the model cannot take, is an
    error; a recorded one whose file is gone only turns uploads off."""
    if weights is None:
        spec = recorded_detector(index.meta)
        if spec is None:
            return None, f"the index {index.path.name} records no detector (it was built from a feature store)"
        if not Path(spec["weights"]).is_file():
            return None, f"the index's detector {spec['weights']} is gone"
        kind, weights = spec["kind"], spec["weights"]
    detector = load_detector(kind, weights)
    width, want = region_width(detector), index.model.model.cfg.region_feat_dim
    if width != want:
        raise ConfigError(f"{weights}: the detector gives {width}-wide region features, the model of the index "
                         f"takes {want}; give the detector its features came from")
    return detector, ""


def check_upload(data: bytes) -> bytes:
    """``data`` when its first bytes are those of an image this server reads; BadUpload otherwise
    (what a name or a Content-Type header says is not asked)."""
    if not data:
        raise BadUpload("the upload is empty: send the image file's bytes as the request body", 422)
    if image_type(data[:HEAD]) is None:
        raise BadUpload("the upload is not an image: its bytes are no PNG, JPEG, GIF, WebP or BMP image")
    return data


def decode_upload(data: bytes) -> np.ndarray:
    """The HxWx3 uint8 pixels of an uploaded image; BadUpload when its bytes are no image this
    server reads, or one over :data:`MAX_PIXELS`."""
    check_upload(data)
    unreadable = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
    try:
        im = Image.open(io.BytesIO(data))
    except unreadable as err:
        raise BadUpload(f"the image could not be read ({type(err).__name__}: {str(err)[:120]})") from None
    with im:
        if im.width * im.height > MAX_PIXELS:
            raise BadUpload(f"the image is {im.width}x{im.height} pixels, over {MAX_PIXELS} in all; send a smaller one",
                            413)
        try:
            return np.asarray(im.convert("RGB"))
        except unreadable as err:  # a damaged file is found when its pixels are read
            raise BadUpload(f"the image could not be read ({type(err).__name__}: {str(err)[:120]})") from None


def like(index: SearchIndex, image_id: str, top: int, timing: dict | None = None) -> list[Hit]:
    """The ``top`` images nearest the indexed image ``image_id`` by the cosine of their stored
    global embeddings, the image itself left out (``timing`` receives the milliseconds taken)."""
    row = index.row[image_id]
    t = time.perf_counter()
    sims, rows = index.coarse.search(index.emb[row].numpy()[None], top + 1)
    _lap({} if timing is None else timing, "coarse_ms", t)
    return [Hit(index.ids[r], float(s), float(s)) for s, r in zip(sims[0], rows[0]) if r >= 0 and r != row][:top]


def like_upload(index: SearchIndex, detector, data: bytes, top: int, timing: dict):
    """The regions the detector finds in an uploaded image, and the ``top`` images nearest it;
    ``timing`` receives the milliseconds of each step."""
    t = time.perf_counter()
    pixels = decode_upload(data)
    regions = detector.detect([pixels])[0]
    t = _lap(timing, "detect_ms", t)
    if len(regions) == 0:
        raise BadUpload("the detector found no object in the image; search with another", 422)
    emb = index.model.encode_images([regions]).emb.float().cpu().numpy()
    t = _lap(timing, "encode_ms", t)
    sims, rows = index.coarse.search(emb, top)
    _lap(timing, "coarse_ms", t)
    return regions, [Hit(index.ids[r], float(s), float(s)) for s, r in zip(sims[0], rows[0]) if r >= 0]


def _lap(timing: dict, name: str, since: float) -> float:
    now = time.perf_counter()
    timing[name] = round(1000 * (now - since), 2)
    return now
