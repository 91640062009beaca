"""Region feature stores: where the pre-training data reads each image's regions.

Every store keeps the contract written down as :class:`FeatureStore`. Two formats give the
same per-image dict (``region_feats`` float32 (n, D), ``boxes`` float32 (n, 4), ``confs``
float32 (n,), ``classes`` (n class names), ``width``, ``height``):

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

import os
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..core.errors import ConfigError, FormatError, MissingFileError, SkippedSamples
from ..core.fileio import load_json
from ..formats.vinvl import VinVLFeatures, VinVLPredictions

__all__ = ["CorpusStores", "FeatureStore", "MemmapStore", "TSVStore", "open_store", "parse_detections",
           "store_format"]

FORMAT = "mvptr-feature-store"
VERSION = 1


def parse_detections(where: str, pred: dict) -> dict:
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


@runtime_checkable
class FeatureStore(Protocol):
    """What every store of region features promises (:class:`TSVStore`, :class:`MemmapStore`,
    :class:`CorpusStores`): images looked up by their string id.

    ``store[image_id]`` is a new dict the caller may change: ``region_feats`` float32 (n, D),
    ``boxes`` float32 (n, 4) xyxy pixels, ``confs`` float32 (n,), ``classes`` (n detector class
    names), ``width`` and ``height`` (pixels); n may be 0. An id the store lacks, or a damaged
    entry, raises :class:`~mvptr.core.errors.FormatError` naming the file and the id.
    ``detections(image_id)`` is the same dict without ``region_feats`` (nothing decoded but the
    boxes). A store may be pickled into DataLoader workers; it reopens its files there.
    """

    def __len__(self) -> int: ...  # the number of images

    def __contains__(self, image_id: object) -> bool: ...

    def ids(self) -> list[str]: ...  # every image id, in the store's order

    def detections(self, image_id: str) -> dict: ...

    def __getitem__(self, image_id: str) -> dict: ...


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
        return parse_detections(f"{self.predictions.path} (image {image_id})", self.predictions[image_id])

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


def store_format(features: str | os.PathLike) -> str:
    """Which format ``features`` is in, from what is on disk: "memmap" for a store directory
    (its ``meta.json`` says so), "vinvl-tsv" for a file (a VinVL ``features.tsv``). A
    directory without ``meta.json`` or a path with nothing there is an error that says which."""
    path = Path(features)
    if path.is_dir():
        if not (path / "meta.json").is_file():
            raise FormatError(f"{path / 'meta.json'}: not found; {path} is a directory but not a feature store "
                              "(`mvptr features convert` writes one), nor a VinVL features.tsv", "file not found")
        return "memmap"
    if path.is_file():
        return "vinvl-tsv"
    raise MissingFileError(f"{path}: no feature store directory or VinVL features.tsv there")


def open_store(features: str, predictions: str, feat_dim: int | None = None,
               skip: SkippedSamples | None = None) -> MemmapStore | TSVStore:
    """The :class:`FeatureStore` at ``features``, in the format :func:`store_format` finds: a
    memmap store directory (``predictions`` unused, ``skip`` too: its rows were checked when it
    was written), or a VinVL ``features.tsv`` with its ``predictions.tsv``. ``feat_dim``: the
    feature width the model reads (a store of another width is refused)."""
    if store_format(features) == "memmap":
        return MemmapStore(features, feat_dim)
    if not predictions:
        raise ConfigError(f"{features}: a VinVL features.tsv needs its predictions file, predictions.tsv "
                          "(data.predictions, or --predictions)")
    return TSVStore(features, predictions, feat_dim, skip)


class CorpusStores:
    """Several corpora's stores read as one :class:`FeatureStore`: image ids are
    ``"<corpus>/<image id>"``, so two corpora may use the same id for different images."""

    def __init__(self, stores: dict[str, FeatureStore]):
        for name in stores:
            if not name or "/" in name:
                raise ConfigError(f"corpus name {name!r}: expected a non-empty name without '/'")
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
