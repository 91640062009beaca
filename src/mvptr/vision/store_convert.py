"""Feature store conversions: VinVL TSV to the memory-mapped float16 store and back, and the
merge of several stores (``--shard I/N``) into one; every output appears whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import time
from array import array
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core.errors import FormatError, OutputExistsError, SkippedSamples, skip_or_raise
from ..core.fileio import naming, tmp_dir
from ..core.shards import shard_part
from ..formats.vinvl import VinVLFeatures, VinVLPredictions, write_vinvl_features, write_vinvl_predictions
from .stores import FORMAT, VERSION, MemmapStore, parse_detections

__all__ = ["convert_vinvl_to_memmap", "convert_memmap_to_vinvl", "merge_stores"]


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
    image = parse_detections(f"{preds.path} (image {image_id})", preds[image_id])
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
                            *, part: tuple[int, int] | None = None) -> dict:
    """Write a memmap store from a VinVL TSV pair, one image at a time.

    Region data goes straight to files as it is read, so memory holds only a few numbers
    per image. The store is built in ``<out_dir>.tmp.<pid>.<random>`` and renamed into place when
    complete, so ``out_dir`` is either absent or a whole store. ``feat_dim`` defaults
    to the width of the first image with regions. With ``skip``, a bad image is left
    out of the store and recorded there instead of raising. With ``part`` = (I, N), the
    store holds share I of N of the images, in the features file's order; :func:`merge_stores`
    joins the N stores into the store of the whole file.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists():
        raise OutputExistsError(f"{out} already exists; remove it or choose another output directory")
    tmp = tmp_dir(out)  # those left by an interrupted conversion are removed
    try:
        with naming(out):  # a write on a full disk names the store
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
                raise FormatError(f"{feats.path}: no image has regions, so the feature width is unknown; pass feat_dim")
            meta = _write_index(tmp, ids, list(class_ids), offsets, sizes, dim)
            tmp.rename(out)
    finally:
        if tmp.exists():  # not renamed into place: a failed conversion leaves no half store
            shutil.rmtree(tmp, ignore_errors=True)
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
        raise OutputExistsError(f"{out} already holds a feature store; remove it or choose another output directory")
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
