"""Region feature stores: where the pre-training data reads each image's regions.

Two stores give the same per-image dict (``region_feats`` float32 (n, D), ``boxes``
float32 (n, 4), ``confs`` float32 (n,), ``classes`` (n class names), ``width``,
``height``):

* :class:`TSVStore` reads the VinVL ``features.tsv`` + ``predictions.tsv`` pair: a
  base64 float32 row and a JSON row to decode per image;
* :class:`MemmapStore` reads a directory written by :func:`convert_vinvl_to_memmap`:
  features as one memory-mapped float16 matrix (half the bytes of float32, nothing to
  parse), detections as flat numpy arrays, and per-image row ranges in ``offsets.npy``.

Layout of a memmap store directory::

    meta.json      {"format": "mvptr-feature-store", "version": 1, "feat_dim": D,
                    "num_images": N, "num_regions": R, "dtype": "float16"}
    ids.json       the N image ids, in row order
    classes.json   class names; tag_ids index into it
    offsets.npy    int64 (N + 1,): image i owns region rows offsets[i]:offsets[i + 1]
    features.f16   raw little-endian float16 (R, D), no header
    boxes.npy      float32 (R, 4), xyxy pixels
    confs.npy      float32 (R,)
    tag_ids.npy    int32 (R,)
    sizes.npy      float32 (N, 2): width, height
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from array import array
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..core.fileio import load_json
from ..core.shards import shard_part
from ..formats.vinvl import VinVLFeatures, VinVLPredictions, write_vinvl_features, write_vinvl_predictions

__all__ = ["CorpusStores", "MemmapStore", "TSVStore", "open_store", "convert_vinvl_to_memmap",
           "convert_memmap_to_vinvl", "merge_stores"]

FORMAT = "mvptr-feature-store"
VERSION = 1


def _detections(where: str, pred: dict) -> dict:
    """Boxes, confidences, class names and image size from one VinVL prediction."""
    objects = pred["objects"]
    w, h = pred.get("image_w"), pred.get("image_h")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (w, h)):
        raise FormatError(f"{where}: expected numbers \"image_w\" and \"image_h\", got {w!r}, {h!r}",
                          "bad image size")
    return {
        "boxes": np.asarray([o["rect"] for o in objects], dtype=np.float32).reshape(len(objects), 4),
        "confs": np.asarray([o.get("conf", 1.0) for o in objects], dtype=np.float32),
        "classes": [o["class"] for o in objects],
        "width": float(w),
        "height": float(h),
    }


class TSVStore:
    """Images of a VinVL ``features.tsv`` + ``predictions.tsv`` pair, by image id."""

    def __init__(self, features_tsv, predictions_tsv, feat_dim: int | None = None,
                 skip: SkippedSamples | None = None):
        # ``skip`` takes the duplicate rows found when the files are indexed
        self.features = VinVLFeatures(features_tsv, feat_dim=feat_dim, skip=skip)
        self.predictions = VinVLPredictions(predictions_tsv, skip=skip)

    def __len__(self) -> int:
        return len(self.features)

    def __contains__(self, image_id) -> bool:
        return image_id in self.features

    def ids(self) -> list[str]:
        return self.features.ids()

    def detections(self, image_id) -> dict:
        """The image without its features: boxes, confs, classes, width, height."""
        return _detections(f"{self.predictions.path} (image {image_id})", self.predictions[image_id])

    def __getitem__(self, image_id) -> dict:
        feats = self.features[image_id]
        image = self.detections(image_id)
        if len(feats) != len(image["classes"]):
            raise FormatError(f"{self.features.path} (image {image_id}): {len(feats)} feature rows but "
                              f"{self.predictions.path} lists {len(image['classes'])} objects",
                              "features/objects mismatch")
        image["region_feats"] = feats
        return image


class MemmapStore:
    """A feature store directory (see the module docstring), read through memory maps.

    The maps are opened on first use and again in a new process (a DataLoader worker),
    so the object pickles as a few small fields; every worker shares the page cache.
    """

    def __init__(self, path, feat_dim: int | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FormatError(f"{self.path}: feature store directory not found")
        meta = load_json(self.path / "meta.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else meta
            raise FormatError(f"{self.path / 'meta.json'}: expected format {FORMAT!r} version {VERSION}, "
                              f"got {got!r}")
        missing = [k for k in ("feat_dim", "num_images", "num_regions") if k not in meta]
        if missing:
            raise FormatError(f"{self.path / 'meta.json'}: missing {', '.join(missing)}")
        if meta.get("dtype") != "float16":
            raise FormatError(f"{self.path / 'meta.json'}: expected dtype \"float16\", got {meta.get('dtype')!r}")
        self.feat_dim = int(meta["feat_dim"])
        self.num_images, self.num_regions = int(meta["num_images"]), int(meta["num_regions"])
        if feat_dim is not None and feat_dim != self.feat_dim:
            raise FormatError(f"{self.path}: stored features have width {self.feat_dim}, expected {feat_dim} "
                              f"(model.region_feat_dim)")
        self._ids = [str(i) for i in load_json(self.path / "ids.json")]
        self._index = {image_id: i for i, image_id in enumerate(self._ids)}
        self.class_names = load_json(self.path / "classes.json")
        if len(self._index) != self.num_images:
            raise FormatError(f"{self.path / 'ids.json'}: expected {self.num_images} distinct image ids, "
                              f"got {len(self._index)}")
        self._maps: dict | None = None
        self._pid: int | None = None
        self._check(self._arrays())

    def _check(self, a: dict) -> None:
        n, r = self.num_images, self.num_regions
        expected = {"offsets": (n + 1,), "boxes": (r, 4), "confs": (r,), "tag_ids": (r,), "sizes": (n, 2)}
        for name, shape in expected.items():
            if a[name].shape != shape:
                raise FormatError(f"{self.path / (name + '.npy')}: expected shape {shape}, got {a[name].shape}")
        offsets = a["offsets"]
        if offsets[0] != 0 or offsets[-1] != r or (np.diff(offsets) < 0).any():
            raise FormatError(f"{self.path / 'offsets.npy'}: expected non-decreasing row offsets from 0 to {r}")

    def _map(self) -> dict:
        """Memory maps of the arrays; the features as a float16 tensor view."""
        feat_path = self.path / "features.f16"
        try:
            size = feat_path.stat().st_size
        except FileNotFoundError:
            raise FormatError(f"{feat_path}: file not found") from None
        if size != self.num_regions * self.feat_dim * 2:
            raise FormatError(f"{feat_path}: expected {self.num_regions} x {self.feat_dim} float16 values "
                              f"({self.num_regions * self.feat_dim * 2} bytes), got {size} bytes")
        # np.asarray drops the memmap subclass, so slices are plain arrays; a zero-byte
        # file, which mmap refuses, needs no map at all.
        half = (np.asarray(np.memmap(feat_path, dtype="<f2", mode="r", shape=(self.num_regions, self.feat_dim)))
                if size else np.zeros((0, self.feat_dim), dtype="<f2"))
        with warnings.catch_warnings():
            # torch warns that writing to a read-only map is undefined; nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            maps: dict = {"features": torch.from_numpy(half)}
        for name in ("offsets", "boxes", "confs", "tag_ids", "sizes"):
            npy = self.path / f"{name}.npy"
            try:
                maps[name] = np.asarray(np.load(npy, mmap_mode="r"))
            except FileNotFoundError:
                raise FormatError(f"{npy}: file not found") from None
            except ValueError as e:
                raise FormatError(f"{npy}: expected a numpy array file: {e}") from None
        return maps

    def _arrays(self) -> dict:
        if self._maps is None or self._pid != os.getpid():
            self._maps, self._pid = self._map(), os.getpid()
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None, "_pid": None}

    def __len__(self) -> int:
        return self.num_images

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._index

    def ids(self) -> list[str]:
        return list(self._ids)

    def _read(self, image_id, features: bool) -> dict:
        i = self._index.get(str(image_id))
        if i is None:
            raise FormatError(f"{self.path}: image {image_id} not found")
        a = self._arrays()
        start, end = a["offsets"][i : i + 2].tolist()
        width, height = a["sizes"][i].tolist()
        names = self.class_names
        image = {
            "boxes": np.array(a["boxes"][start:end]),
            "confs": np.array(a["confs"][start:end]),
            "classes": [names[t] for t in a["tag_ids"][start:end].tolist()],
            "width": width,
            "height": height,
        }
        if features:
            # One vectorised widening of the mapped rows. torch's float16 cast uses the CPU's
            # conversion instructions; numpy's is scalar code, over 10x slower per image.
            image["region_feats"] = a["features"][start:end].float().numpy()
        return image

    def detections(self, image_id) -> dict:
        """The image without its features: boxes, confs, classes, width, height."""
        return self._read(image_id, features=False)

    def __getitem__(self, image_id) -> dict:
        return self._read(image_id, features=True)


def open_store(features: str, predictions: str, feat_dim: int | None = None,
               skip: SkippedSamples | None = None) -> MemmapStore | TSVStore:
    """A memmap store when ``features`` is a directory (``predictions`` is then unused), else the TSV pair."""
    if os.path.isdir(features):
        return MemmapStore(features, feat_dim)
    return TSVStore(features, predictions, feat_dim, skip)


def _raw_to_npy(raw: Path, dtype: str, shape: tuple[int, ...]) -> None:
    """Turn a headerless array file into ``.npy`` by streaming it behind a header."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(raw, "rb") as src, open(raw.with_suffix(".npy"), "wb") as dst:
        np.lib.format.write_array_header_1_0(dst, header)
        shutil.copyfileobj(src, dst, 1 << 22)
    raw.unlink()


def _checked_image(feats: VinVLFeatures, preds: VinVLPredictions, image_id: str,
                   dim: int | None) -> tuple[np.ndarray, dict]:
    """Features and detections of one image, checked for the store: rows match objects, one
    width throughout, values within float16's range."""
    x = feats[image_id]
    image = _detections(f"{preds.path} (image {image_id})", preds[image_id])
    where = f"{feats.path} (image {image_id})"
    if len(x) != len(image["classes"]):
        raise FormatError(f"{where}: {len(x)} feature rows but {preds.path} lists "
                          f"{len(image['classes'])} objects", "features/objects mismatch")
    if len(x):
        if dim is not None and x.shape[1] != dim:
            raise FormatError(f"{where}: expected feature width {dim}, got {x.shape[1]}", "wrong feature width")
        if (np.isinf(x.astype("<f2")) & np.isfinite(x)).any():
            raise FormatError(f"{where}: feature values beyond float16's range (+-65504)", "float16 overflow")
    return x, image


def convert_vinvl_to_memmap(features_tsv, predictions_tsv, out_dir, feat_dim: int | None = None,
                            progress: bool = True, skip: SkippedSamples | None = None,
                            part: tuple[int, int] | None = None) -> dict:
    """Write a memmap store from a VinVL TSV pair, one image at a time.

    Region data goes straight to files as it is read, so memory holds only a few numbers
    per image. The store is built in ``<out_dir>.tmp`` and renamed into place when
    complete, so ``out_dir`` is either absent or a whole store. ``feat_dim`` defaults
    to the width of the first image with regions. With ``skip``, a bad image is left
    out of the store and recorded there instead of raising. With ``part`` = (I, N), the
    store holds share I of N of the images, in the features file's order; :func:`merge_stores`
    joins the N stores into the store of the whole file.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another output directory")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # left by an interrupted conversion
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    feats = VinVLFeatures(features_tsv, feat_dim=feat_dim, skip=skip)
    preds = VinVLPredictions(predictions_tsv, skip=skip)
    ids = []
    dim = feat_dim
    class_ids: dict[str, int] = {}
    offsets, sizes = array("q", [0]), array("f")
    with open(tmp / "features.f16", "wb") as f_feat, open(tmp / "boxes.raw", "wb") as f_boxes, \
            open(tmp / "confs.raw", "wb") as f_confs, open(tmp / "tag_ids.raw", "wb") as f_tags:
        for image_id in tqdm(shard_part(feats.ids(), part), desc="convert", unit="img", disable=not progress):
            try:
                x, image = _checked_image(feats, preds, image_id, dim)
            except FormatError as err:
                skip_or_raise(skip, err)
                continue
            ids.append(image_id)
            if len(x):
                dim = x.shape[1]
                f_feat.write(x.astype("<f2").tobytes())
            f_boxes.write(image["boxes"].astype("<f4").tobytes())
            f_confs.write(image["confs"].astype("<f4").tobytes())
            tags = [class_ids.setdefault(name, len(class_ids)) for name in image["classes"]]
            f_tags.write(np.asarray(tags, dtype="<i4").tobytes())
            offsets.append(offsets[-1] + len(x))
            sizes.extend((image["width"], image["height"]))
    if dim is None:
        shutil.rmtree(tmp)
        raise FormatError(f"{feats.path}: no image has regions, so the feature width is unknown; pass feat_dim")
    meta = _write_index(tmp, ids, list(class_ids), offsets, sizes, dim)
    tmp.rename(out)
    return {**meta, "num_classes": len(class_ids), "out_dir": str(out),
            "bytes": sum(p.stat().st_size for p in out.iterdir()), "seconds": round(time.perf_counter() - t0, 1)}


def _write_index(tmp: Path, ids: list[str], classes: list[str], offsets: array, sizes: array, dim: int) -> dict:
    """Everything of a store beside the region files (features.f16, boxes.raw, confs.raw,
    tag_ids.raw, already in ``tmp``); meta.json last. Returns the meta."""
    regions = offsets[-1]
    np.save(tmp / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    np.save(tmp / "sizes.npy", np.frombuffer(sizes, dtype=np.float32).reshape(-1, 2))
    _raw_to_npy(tmp / "boxes.raw", "<f4", (regions, 4))
    _raw_to_npy(tmp / "confs.raw", "<f4", (regions,))
    _raw_to_npy(tmp / "tag_ids.raw", "<i4", (regions,))
    (tmp / "ids.json").write_text(json.dumps(ids), encoding="utf-8")
    (tmp / "classes.json").write_text(json.dumps(classes), encoding="utf-8")
    meta = {"format": FORMAT, "version": VERSION, "feat_dim": dim, "num_images": len(ids),
            "num_regions": regions, "dtype": "float16"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _write_rows(f, rows: np.ndarray, dtype: str, convert=None, chunk: int = 1 << 20) -> None:
    """Append the rows of a (mapped) array to ``f``, a chunk at a time, through ``convert``."""
    for lo in range(0, len(rows), chunk):
        block = np.asarray(rows[lo:lo + chunk])
        f.write((convert(block) if convert else block).astype(dtype).tobytes())


def merge_stores(store_dirs, out_dir) -> dict:
    """Join stores (the shares of :func:`convert_vinvl_to_memmap` with ``part``) into one in
    ``out_dir``, images in the order given: the store the whole input would have given,
    byte for byte. ``out_dir`` may exist (it may hold the shares); meta.json, which makes a
    directory a store, is written last."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    if (out / "meta.json").exists():
        raise FileExistsError(f"{out} already holds a feature store; remove it or choose another output directory")
    stores = [MemmapStore(d) for d in store_dirs]
    if not stores:
        raise FormatError(f"{out}: no stores to merge")
    dims = {s.feat_dim for s in stores}
    if len(dims) > 1:
        raise FormatError(f"{out}: the stores have different feature widths {sorted(dims)}; they come from "
                          "different inputs", "wrong feature width")
    tmp = out / ".merge.tmp"
    if tmp.exists():  # left by an interrupted merge
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ids: list[str] = []
    where: dict[str, Path] = {}
    class_ids: dict[str, int] = {}
    offsets, sizes = array("q", [0]), array("f")
    with open(tmp / "features.f16", "wb") as f_feat, open(tmp / "boxes.raw", "wb") as f_boxes, \
            open(tmp / "confs.raw", "wb") as f_confs, open(tmp / "tag_ids.raw", "wb") as f_tags:
        for store in stores:
            for image_id in store.ids():
                if image_id in where:
                    raise FormatError(f"{store.path}: image {image_id} is also in {where[image_id]}",
                                      "duplicate image")
                where[image_id] = store.path
            ids += store.ids()
            a = store._arrays()
            with open(store.path / "features.f16", "rb") as src:
                shutil.copyfileobj(src, f_feat, 1 << 22)
            _write_rows(f_boxes, a["boxes"], "<f4")
            _write_rows(f_confs, a["confs"], "<f4")
            # class ids are per store: through the joined table, in order of first appearance
            remap = np.asarray([class_ids.setdefault(n, len(class_ids)) for n in store.class_names], dtype=np.int64)
            _write_rows(f_tags, a["tag_ids"], "<i4", lambda t, remap=remap: remap[t])
            offsets.extend((np.asarray(a["offsets"][1:]) + offsets[-1]).tolist())
            sizes.extend(np.asarray(a["sizes"], dtype=np.float32).ravel().tolist())
    meta = _write_index(tmp, ids, list(class_ids), offsets, sizes, dims.pop())
    for name in sorted(p.name for p in tmp.iterdir() if p.name != "meta.json") + ["meta.json"]:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
    return {**meta, "num_classes": len(class_ids), "out_dir": str(out), "seconds": round(time.perf_counter() - t0, 1)}


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def convert_memmap_to_vinvl(store_dir, out_dir, progress: bool = True) -> dict:
    """Write ``features.tsv`` and ``predictions.tsv`` (with ``.lineidx`` files) from a memmap store.

    Features are the stored float16 values widened to float32; an ``imageid2idx.json``
    beside them spares readers a scan of the ids.
    """
    store = MemmapStore(store_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = store.ids()

    def predictions():
        for image_id in ids:
            image = store.detections(image_id)
            objects = [{"rect": box, "class": name, "conf": conf} for box, name, conf
                       in zip(image["boxes"].tolist(), image["classes"], image["confs"].tolist())]
            yield image_id, {"image_h": _number(image["height"]), "image_w": _number(image["width"]),
                             "num_boxes": len(objects), "objects": objects}

    write_vinvl_features(out / "features.tsv", ((i, store[i]["region_feats"])
                                                for i in tqdm(ids, desc="export", unit="img", disable=not progress)))
    write_vinvl_predictions(out / "predictions.tsv", predictions())
    (out / "imageid2idx.json").write_text(json.dumps({image_id: k for k, image_id in enumerate(ids)}),
                                          encoding="utf-8")
    return {"out_dir": str(out), "num_images": len(ids), "num_regions": store.num_regions,
            "feat_dim": store.feat_dim}


class CorpusStores:
    """Several corpora's stores read as one: image ids are ``"<corpus>/<image id>"``, so two
    corpora may use the same id for different images."""

    def __init__(self, stores: dict):
        for name in stores:
            if not name or "/" in name:
                raise ValueError(f"corpus name {name!r}: expected a non-empty name without '/'")
        self.stores = dict(stores)

    def _split(self, image_id) -> tuple:
        name, sep, inner = str(image_id).partition("/")
        store = self.stores.get(name)
        if store is None or not sep:
            raise FormatError(f"image {image_id}: expected \"<corpus>/<image id>\" with a corpus among "
                              f"{', '.join(self.stores)}", "image not found")
        return store, inner

    def __len__(self) -> int:
        return sum(len(s) for s in self.stores.values())

    def __contains__(self, image_id) -> bool:
        name, sep, inner = str(image_id).partition("/")
        return bool(sep) and name in self.stores and inner in self.stores[name]

    def ids(self) -> list[str]:
        return [f"{name}/{i}" for name, s in self.stores.items() for i in s.ids()]

    def detections(self, image_id) -> dict:
        store, inner = self._split(image_id)
        return store.detections(inner)

    def __getitem__(self, image_id) -> dict:
        store, inner = self._split(image_id)
        return store[inner]
