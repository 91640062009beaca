"""VinVL TSV files: region features, detector predictions and their image sizes."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..core.fileio import PathLike, load_json
from .tsv import TSVFile, _write_tsv


def _check_field(path: PathLike, where: str, value: str, what: str) -> None:
    # Tabs and newlines would break the TSV/JSONL row structure on disk.
    if not isinstance(value, str) or not value or re.search(r"[\t\r\n]", value):
        raise FormatError(f"{path} ({where}): expected {what} as a non-empty string "
                          f"without tabs or newlines, got {value!r}")


# --------------------------------------------------------------------------- captions


class _ImageTSV:
    """A TSV keyed by image id in its first column."""

    def __init__(self, tsv_path: PathLike, imageid2idx: PathLike | Mapping[str, int] | None = None,
                 skip: SkippedSamples | None = None):
        self.tsv = TSVFile(tsv_path)
        self.path = self.tsv.path
        if imageid2idx is None:
            default = Path(self.path).with_name("imageid2idx.json")
            imageid2idx = default if default.is_file() else None
        if imageid2idx is None:
            self._index = self._scan(skip)
        else:
            source = "imageid2idx" if isinstance(imageid2idx, Mapping) else imageid2idx
            data = imageid2idx if isinstance(imageid2idx, Mapping) else load_json(imageid2idx)
            if not isinstance(data, Mapping) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
                raise FormatError(f"{source}: expected an object mapping image ids to row indices")
            self._index = {str(k): v for k, v in data.items()}

    def _scan(self, skip: SkippedSamples | None) -> dict[str, int]:
        index: dict[str, int] = {}
        for i in range(len(self.tsv)):
            key = self.tsv.key(i)
            if key in index:  # skipped: the first row of the image is kept
                skip_or_raise(skip, FormatError(f"{self.path} line {i + 1}: image {key} already appears on "
                                                 f"line {index[key] + 1}", "duplicate image"), samples=0)
                continue
            index[key] = i
        return index

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._index

    def ids(self) -> list[str]:
        return list(self._index)

    def _fields(self, image_id, count: int | tuple[int, ...]) -> tuple[str, list[str]]:
        """(location for error messages, fields) of an image's row, of ``count`` fields (or one of them)."""
        image_id = str(image_id)
        if image_id not in self._index:
            raise FormatError(f"{self.path}: image {image_id} not found", "image not found")
        i = self._index[image_id]
        where = f"{self.path} line {i + 1} (image {image_id})"
        try:
            fields = self.tsv.row(i)
        except IndexError:
            raise FormatError(f"{where}: row index {i} beyond the {len(self.tsv)} rows "
                              f"of the file", "stale index") from None
        counts = count if isinstance(count, tuple) else (count,)
        if len(fields) not in counts:
            raise FormatError(f"{where}: expected {' or '.join(map(str, counts))} tab-separated fields, "
                              f"got {len(fields)}", "truncated row")
        if fields[0] != image_id:
            raise FormatError(f"{where}: row holds image {fields[0]}; the image index is stale", "stale index")
        return where, fields


def _box_count(where: str, value: Any) -> int:
    """A box count: an integer, or its decimal string (as TSV columns and some JSON files hold it)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise FormatError(f"{where}: expected a non-negative integer box count, got {value!r}", "bad box count")


def _base64(where: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{where}: expected base64 feature data: {e}", "bad base64") from None


# the largest feature magnitude a detector gives: VinVL's ResNeXt features are pooled post-ReLU
# values well below 100, box position numbers lie in [0, 1], and the demo detector's ReLU
# embeddings stay within tens. Values beyond it (1e30, say) are finite yet make a training
# step's loss NaN, and the step would be skipped (docs/DECISIONS.md, "Feature magnitude").
FEATURE_BOUND = 1e4


def _check_finite(where: str, x: np.ndarray) -> None:
    """NaN, inf or huge features would make a whole training step's loss NaN (the step is skipped)."""
    bad = ~np.isfinite(x)
    if bad.any():
        box, col = (int(v[0]) for v in np.nonzero(bad))
        raise FormatError(f"{where}: {int(bad.sum())} feature values are NaN or inf (first: box {box}, value {col})",
                          "non-finite features")
    huge = np.abs(x) > FEATURE_BOUND
    if huge.any():
        box, col = (int(v[0]) for v in np.nonzero(huge))
        raise FormatError(f"{where}: {int(huge.sum())} feature values beyond +-{FEATURE_BOUND:g}, which no detector "
                          f"gives (first: box {box}, value {col}: {float(x[box, col]):g})", "huge features")


def write_vinvl_features(tsv_path: PathLike, rows: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write region features as ``image_id \\t num_boxes \\t base64(float32 bytes)`` rows."""
    def lines():
        for image_id, feats in rows:
            _check_field(tsv_path, "features row", image_id, "an image id")
            feats = np.asarray(feats)
            if feats.ndim != 2:
                raise FormatError(f"{tsv_path} (image {image_id}): expected a (num_boxes, dim) "
                                  f"feature array, got shape {feats.shape}")
            _check_finite(f"{tsv_path} (image {image_id})", feats)
            data = np.ascontiguousarray(feats, dtype="<f4").tobytes()
            yield image_id, str(feats.shape[0]), base64.b64encode(data).decode("ascii")
    _write_tsv(tsv_path, lines())


class VinVLFeatures(_ImageTSV):
    """Region features of a VinVL features TSV, looked up by image id.

    The row of each image comes from ``imageid2idx`` (a dict or JSON path), else
    from ``imageid2idx.json`` beside the TSV, else from one scan of the first column.
    """

    def __init__(self, tsv_path: PathLike, feat_dim: int | None = None,
                 imageid2idx: PathLike | Mapping[str, int] | None = None, skip: SkippedSamples | None = None):
        super().__init__(tsv_path, imageid2idx, skip)
        self.feat_dim = feat_dim

    def __getitem__(self, image_id) -> np.ndarray:
        where, fields = self._fields(image_id, (3, 2))
        if len(fields) == 3:
            n, raw = _box_count(where, fields[1]), _base64(where, fields[2])
        elif fields[1].lstrip().startswith(("{", "[")):
            n, raw = self._json_row(where, fields[1])
        else:  # "id \t num_boxes" cut short, not a JSON row
            raise FormatError(f"{where}: expected 3 tab-separated fields, got 2", "truncated row")
        return self._decode(where, raw, n)

    @staticmethod
    def _json_row(where: str, text: str) -> tuple[int, bytes]:
        """Box count and feature bytes of a two-column row: VinVL captioning's
        ``{"num_boxes": N, "features": base64}``, or Oscar's ``[{"feature": base64}, ...]``, one per box."""
        try:
            info = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: expected a JSON object with \"num_boxes\" and \"features\": {e}",
                              "bad features JSON") from None
        if isinstance(info, list) and all(isinstance(b, dict) and isinstance(b.get("feature"), str) for b in info):
            return len(info), b"".join(_base64(where, b["feature"]) for b in info)
        if not isinstance(info, dict) or "num_boxes" not in info or not isinstance(info.get("features"), str):
            raise FormatError(f"{where}: expected a JSON object with \"num_boxes\" and base64 \"features\"",
                              "bad features JSON")
        return _box_count(where, info["num_boxes"]), _base64(where, info["features"])

    def _decode(self, where: str, raw: bytes, n: int) -> np.ndarray:
        dim, size = self.feat_dim, len(raw)
        if n == 0:
            if size:
                raise FormatError(f"{where}: num_boxes is 0 but the row holds {size} bytes", "box count mismatch")
            return np.zeros((0, dim or 0), dtype=np.float32)
        # With feat_dim known, read the box count from the data; else the width.
        if dim is not None:
            if size % (4 * dim) == 0:
                if size // (4 * dim) != n:
                    raise FormatError(f"{where}: num_boxes is {n} but the data holds "
                                      f"{size // (4 * dim)} boxes of width {dim}", "box count mismatch")
            elif size % (4 * n) == 0:
                raise FormatError(f"{where}: expected feature width {dim}, got {size // (4 * n)} "
                                  f"({size} bytes for {n} boxes)", "wrong feature width")
            else:
                raise FormatError(f"{where}: byte length {size} is not a multiple of 4*{dim}", "bad byte length")
        elif size % (4 * n):
            raise FormatError(f"{where}: byte length {size} is not a multiple of "
                              f"4*num_boxes ({4 * n})", "bad byte length")
        # astype copies: frombuffer's view is read-only, which torch.from_numpy warns about.
        x = np.frombuffer(raw, dtype="<f4").reshape(n, -1).astype(np.float32)
        _check_finite(where, x)
        return x


def write_vinvl_predictions(tsv_path: PathLike, rows: Iterable[tuple[str, Mapping]]) -> None:
    """Write detector outputs as ``image_id \\t json`` rows.

    The JSON holds "image_h", "image_w", "num_boxes" and "objects", a list of
    ``{"rect": [x1, y1, x2, y2], "class": str, "conf": float}``.
    """
    def lines():
        for image_id, pred in rows:
            _check_field(tsv_path, "predictions row", image_id, "an image id")
            yield image_id, json.dumps(pred)
    _write_tsv(tsv_path, lines())


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class VinVLImageSizes(_ImageTSV):
    """Image sizes of a VinVL ``hw.tsv`` (``image_id \\t [{"height": h, "width": w}]``), by image id."""

    def __getitem__(self, image_id) -> tuple[float, float]:
        where, (_, text) = self._fields(image_id, 2)
        try:
            hw = json.loads(text)
        except json.JSONDecodeError:
            hw = None
        if isinstance(hw, list) and len(hw) == 1:
            hw = hw[0]
        if not (isinstance(hw, dict) and all(_is_number(hw.get(k)) and hw[k] > 0 for k in ("height", "width"))):
            raise FormatError(f"{where}: expected [{{\"height\": h, \"width\": w}}] with positive numbers, "
                              f"got {text[:80]!r}", "bad image size")
        return hw["width"], hw["height"]


def companion_sizes(predictions_path: PathLike) -> Path | None:
    """The hw.tsv holding the image sizes that a predictions file may lack: ``<name>.hw.tsv``
    beside ``<name>.tsv``, ``<name>.label.tsv`` or ``<name>.predictions.tsv``, else ``hw.tsv``."""
    p = Path(predictions_path)
    base = p.name[:-4] if p.name.endswith(".tsv") else p.name
    for suffix in (".label", ".predictions"):
        base = base[:-len(suffix)] if base.endswith(suffix) else base
    return next((c for c in (p.with_name(f"{base}.hw.tsv"), p.with_name("hw.tsv")) if c.is_file()), None)


class VinVLPredictions(_ImageTSV):
    """Detector predictions (boxes, object tags) of a VinVL predictions TSV, by image id.

    A row is ``{"objects": [...], "image_h", "image_w", "num_boxes"}``, or the objects
    alone as a JSON list (the rows of VinVL's ``label.tsv``). Sizes a row lacks (VinVL's
    detector writes none) come from ``sizes``, a ``hw.tsv``, by default the one
    :func:`companion_sizes` finds beside the file.
    """

    def __init__(self, tsv_path: PathLike, imageid2idx: PathLike | Mapping[str, int] | None = None,
                 skip: SkippedSamples | None = None, sizes: PathLike | None = None):
        super().__init__(tsv_path, imageid2idx, skip)
        self.sizes_path = sizes
        self._sizes: VinVLImageSizes | None = None

    def _size(self, where: str, image_id: str) -> tuple[float, float]:
        if self._sizes is None:
            path = self.sizes_path or companion_sizes(self.path)
            if path is None:
                raise FormatError(f"{where}: no \"image_w\" and \"image_h\", and no hw.tsv beside the file to "
                                  f"take them from (VinVL's detector writes sizes to a separate <name>.hw.tsv; put "
                                  f"it beside {Path(self.path).name})", "bad image size")
            self._sizes = VinVLImageSizes(path)
        if image_id not in self._sizes:
            raise FormatError(f"{where}: its size is not in {self._sizes.path}", "bad image size")
        return self._sizes[image_id]

    def __getitem__(self, image_id) -> dict:
        where, (_, text) = self._fields(image_id, 2)
        try:
            pred = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: expected a JSON object: {e}", "bad predictions JSON") from None
        if isinstance(pred, list):  # a label.tsv row: the objects alone
            pred = {"objects": pred}
        if not isinstance(pred, dict) or not isinstance(pred.get("objects"), list):
            raise FormatError(f"{where}: expected a JSON object with an \"objects\" list, or a list of "
                              "objects", "bad predictions JSON")
        if "image_w" not in pred or "image_h" not in pred:
            w, h = self._size(where, str(image_id))
            pred = {**pred, "image_w": w, "image_h": h}
        w, h = pred.get("image_w"), pred.get("image_h")
        for k, obj in enumerate(pred["objects"]):
            _check_object(where, k, obj, w, h)
        if "num_boxes" in pred:
            n = _box_count(where, pred["num_boxes"])
            if n != len(pred["objects"]):
                raise FormatError(f"{where}: num_boxes is {n} but there are {len(pred['objects'])} objects",
                                  "box count mismatch")
            pred["num_boxes"] = n
        return pred


def _check_object(where: str, k: int, obj: Any, w: Any, h: Any) -> None:
    rect = obj.get("rect") if isinstance(obj, dict) else None
    if not (isinstance(rect, list) and len(rect) == 4 and all(map(_is_number, rect))):
        raise FormatError(f"{where}: object {k}: expected \"rect\" of 4 numbers, got {rect!r}", "bad box")
    if not isinstance(obj.get("class"), str):
        raise FormatError(f"{where}: object {k}: expected a string \"class\", got {obj.get('class')!r}", "bad class")
    conf = obj.get("conf", 1.0)  # optional (ground-truth boxes have none)
    if not (_is_number(conf) and math.isfinite(conf)):
        raise FormatError(f"{where}: object {k}: expected a number \"conf\", got {conf!r}", "bad confidence")
    x1, y1, x2, y2 = rect
    if not all(map(math.isfinite, rect)) or x2 < x1 or y2 < y1:
        raise FormatError(f"{where}: object {k}: box {rect} is not finite corners [x1, y1, x2, y2] with "
                          "x1 <= x2 and y1 <= y2", "bad box")
    # One pixel of slack: detectors clip to [0, w] or [0, w - 1] inconsistently.
    if _is_number(w) and _is_number(h) and (min(x1, y1) < -1 or x2 > w + 1 or y2 > h + 1):
        raise FormatError(f"{where}: object {k}: box {rect} lies outside the {w}x{h} image", "box outside image")
