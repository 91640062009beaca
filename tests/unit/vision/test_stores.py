"""Feature stores: TSV -> memmap -> TSV, identical batches from both, errors, DataLoader workers."""

import json
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mvptr.cli import main
from mvptr.core.errors import FormatError
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.data.pretrain import ImageSource, tag_vocab_from
from mvptr.demo.world import generate_demo_world
from mvptr.formats.vinvl import VinVLFeatures, VinVLPredictions, write_vinvl_predictions
from mvptr.text.tokenizer import WordPieces, load_tokenizer
from mvptr.vision.store_convert import convert_memmap_to_vinvl, convert_vinvl_to_memmap
from mvptr.vision.stores import MemmapStore, TSVStore, open_store

DIM = 134  # the demo world's 128-wide embedding + 6 box numbers


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny demo world, its memmap store, and the TSV pair exported back from the store."""
    root = tmp_path_factory.mktemp("stores")
    generate_demo_world(root / "world", n_train=24, n_val=0, n_test=8, detector_epochs=1, progress=False)
    summary = convert_vinvl_to_memmap(root / "world" / "features.tsv", root / "world" / "predictions.tsv",
                                      root / "store", progress=False)
    assert summary["num_images"] == 32 and summary["feat_dim"] == DIM and summary["num_regions"] > 32
    assert not (root / "store.tmp").exists()
    convert_memmap_to_vinvl(root / "store", root / "exported", progress=False)
    return root


def test_store_holds_the_tsv_values_rounded_to_float16(root):
    tsv = TSVStore(root / "world" / "features.tsv", root / "world" / "predictions.tsv", DIM)
    store = open_store(str(root / "store"), "", DIM)
    assert isinstance(store, MemmapStore)
    assert store.ids() == tsv.ids() and len(store) == len(tsv) == 32
    for image_id in tsv.ids():
        a, b = tsv[image_id], store[image_id]
        assert a.keys() == b.keys()
        assert b["region_feats"].dtype == np.float32 and b["boxes"].dtype == np.float32
        np.testing.assert_array_equal(b["region_feats"], a["region_feats"].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(b["boxes"], a["boxes"])
        np.testing.assert_array_equal(b["confs"], a["confs"])
        assert b["classes"] == a["classes"]
        assert (b["width"], b["height"]) == (a["width"], a["height"])


def test_exported_tsv_matches_the_store_exactly(root):
    store = MemmapStore(root / "store")
    exported = TSVStore(root / "exported" / "features.tsv", root / "exported" / "predictions.tsv", DIM)
    assert exported.ids() == store.ids()
    for image_id in store.ids():
        a, b = exported[image_id], store[image_id]
        for key in ("region_feats", "boxes", "confs"):
            np.testing.assert_array_equal(a[key], b[key])
        assert (a["classes"], a["width"], a["height"]) == (b["classes"], b["width"], b["height"])
    pred = VinVLPredictions(root / "exported" / "predictions.tsv")[store.ids()[0]]
    assert pred["num_boxes"] == len(pred["objects"]) and isinstance(pred["image_w"], int)


def test_exported_tsv_and_store_give_identical_batches(root):
    pieces = WordPieces(load_tokenizer(), 16)
    # few regions and tags, so that truncation and the confidence order both matter
    from_tsv = ImageSource(str(root / "exported" / "features.tsv"), str(root / "exported" / "predictions.tsv"),
                           DIM, max_regions=3, max_tags=2)
    from_store = ImageSource(str(root / "store"), "", DIM, max_regions=3, max_tags=2)
    ids = from_store.store.ids()
    assert any(len(from_store.store.detections(i)["classes"]) > 3 for i in ids)
    vocab = tag_vocab_from(from_store, ids)
    assert vocab == tag_vocab_from(from_tsv, ids) and len(vocab) > 1
    captions = pieces.captions(["a big red circle", "a small blue square left of a triangle", "two shapes"])

    def batches(images):
        collate = Collator(pieces, vocab, 4, 30522, CollateSettings(masking=Masking(words=0.3, phrases=0.3, tags=0.3)),
                           torch.Generator().manual_seed(0))
        items = [{"input_ids": captions[k % 3], "phrases": [k % 4], "image_index": k, **images(image_id)}
                 for k, image_id in enumerate(ids)]
        return [collate(items[s:s + 8]) for s in range(0, len(items), 8)]

    for a, b in zip(batches(from_tsv), batches(from_store), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    image = from_store.store[ids[0]]
    by_conf = sorted(range(len(image["confs"])), key=lambda i: -float(image["confs"][i]))
    assert from_store(ids[0])["tags"] == [image["classes"][i] for i in by_conf[:2]]


def _copy(root, tmp_path):
    return shutil.copytree(root / "store", tmp_path / "store")


def test_missing_directory_and_files(root, tmp_path):
    with pytest.raises(FormatError, match=re.escape(str(tmp_path / "absent"))):
        MemmapStore(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match=re.escape(str(tmp_path / "empty" / "meta.json"))):
        open_store(str(tmp_path / "empty"), "", DIM)
    store = _copy(root, tmp_path)
    for name in ("boxes.npy", "features.f16"):
        shutil.move(store / name, tmp_path / name)
        with pytest.raises(FormatError, match=re.escape(str(store / name)) + ".*not found"):
            MemmapStore(store)
        shutil.move(tmp_path / name, store / name)
    with open(store / "features.f16", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(FormatError, match="features.f16.*bytes"):
        MemmapStore(store)


def test_wrong_version_and_feature_width(root, tmp_path):
    with pytest.raises(FormatError, match=f"width {DIM}, expected 2054"):
        MemmapStore(root / "store", feat_dim=2054)
    store = _copy(root, tmp_path)
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(FormatError, match=re.escape(str(store / "meta.json")) + ".*version 1.*99"):
        MemmapStore(store)


def test_unknown_image_names_store_and_id(root):
    store = MemmapStore(root / "store")
    assert "no-such-image" not in store
    with pytest.raises(FormatError, match=re.escape(str(root / "store")) + ".*no-such-image"):
        store["no-such-image"]


def test_rows_and_objects_must_agree(root, tmp_path):
    world = root / "world"
    preds = VinVLPredictions(world / "predictions.tsv")
    ids = VinVLFeatures(world / "features.tsv").ids()
    short = ids[3]

    def rows():
        for image_id in ids:
            pred = preds[image_id]
            if image_id == short:  # one object fewer than feature rows
                pred = {**pred, "objects": pred["objects"][1:], "num_boxes": len(pred["objects"]) - 1}
            yield image_id, pred

    write_vinvl_predictions(tmp_path / "predictions.tsv", rows())
    expected = re.escape(str(world / "features.tsv")) + f".*image {short}.*objects"
    with pytest.raises(FormatError, match=expected):
        TSVStore(world / "features.tsv", tmp_path / "predictions.tsv", DIM)[short]
    with pytest.raises(FormatError, match=expected):
        convert_vinvl_to_memmap(world / "features.tsv", tmp_path / "predictions.tsv", tmp_path / "store",
                                progress=False)
    assert not (tmp_path / "store").exists()
    with pytest.raises(FileExistsError):
        convert_vinvl_to_memmap(world / "features.tsv", world / "predictions.tsv", root / "store", progress=False)


class _Images(Dataset):
    def __init__(self, store):
        self.store, self.ids = store, store.ids()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        image = self.store[self.ids[k]]
        return self.ids[k], image, (os.getpid(), self.store._pid)


def test_store_pickles_and_feeds_dataloader_workers(root):
    store = MemmapStore(root / "store")
    first = store.ids()[0]
    blob = pickle.dumps(store)
    assert len(blob) < 10_000  # ids and metadata only, never the mapped arrays
    np.testing.assert_array_equal(pickle.loads(blob)[first]["region_feats"], store[first]["region_feats"])
    loader = DataLoader(_Images(store), batch_size=4, num_workers=2, collate_fn=list)
    seen = [item for batch in loader for item in batch]
    assert [image_id for image_id, _, _ in seen] == store.ids()
    for image_id, image, (pid, mapped_pid) in seen:
        assert pid != os.getpid() and mapped_pid == pid  # each worker mapped the files itself
        np.testing.assert_array_equal(image["region_feats"], store[image_id]["region_feats"])
        assert image["classes"] == store[image_id]["classes"]


def test_command_line_convert_and_export(root, tmp_path, capsys):
    world = root / "world"
    assert main(["features", "convert", "--features", str(world / "features.tsv"),
                 "--predictions", str(world / "predictions.tsv"), "--out", str(tmp_path / "store")]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 32
    assert main(["features", "export", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "tsv")]) == 0
    assert (tmp_path / "tsv" / "features.lineidx").is_file() and (tmp_path / "tsv" / "predictions.lineidx").is_file()
    assert main(["features", "convert", "--features", str(world / "features.tsv"),
                 "--predictions", str(world / "predictions.tsv"), "--out", str(tmp_path / "store")]) == 2
    assert re.search("already exists", capsys.readouterr().err)


class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        return self.items[k]


def test_worker_batches_are_in_shared_memory_and_equal_in_process_ones():
    collate = Collator(WordPieces(load_tokenizer(), 16), ["circle", "square"], 4, 30522)
    rng = np.random.default_rng(0)
    items = [{"region_feats": rng.random((k, 7), dtype=np.float32), "boxes": rng.random((k, 4), dtype=np.float32),
              "tags": ["circle"] * k, "width": 10.0, "height": 10.0} for k in (3, 5, 1, 0, 5, 2)]
    expected = [collate.image(items[:3]), collate.image(items[3:])]
    assert not expected[0]["region_feats"].is_shared()
    got = list(DataLoader(_Items(items), batch_size=3, num_workers=2, collate_fn=collate.image))
    for a, b in zip(expected, got, strict=True):
        assert b["region_feats"].is_shared()  # allocated in the worker's shared memory, not copied there
        for key in a:
            assert torch.equal(a[key], b[key]), key
    feats = got[0]["region_feats"]
    assert (feats[0, 3:] == 0).all() and (feats[2, 1:] == 0).all()  # padding is zero, not leftover memory


def test_a_tsv_store_is_read_by_many_threads_at_once(root):
    """Threads share the store's files: 8 threads, thousands of lookups, every one equal to a
    read by one thread (a shared file position would mix their rows)."""
    import random
    import threading

    store = TSVStore(root / "world" / "features.tsv", root / "world" / "predictions.tsv", DIM)
    ids = store.ids()
    want = {i: store[i] for i in ids}
    rows = [store.features.tsv.raw(r) for r in range(len(store.features.tsv))]
    errors, done = [], []

    def reader(seed):
        rng = random.Random(seed)
        try:
            for _ in range(400):
                i = rng.choice(ids)
                got = store[i]
                assert got["region_feats"].tobytes() == want[i]["region_feats"].tobytes()
                assert np.array_equal(got["boxes"], want[i]["boxes"]) and got["classes"] == want[i]["classes"]
                r = rng.randrange(len(rows))
                tsv = store.features.tsv
                assert tsv.raw(r) == rows[r] and tsv.key(r) == rows[r].split(b"\t")[0].decode()
                done.append(1)
        except Exception as err:  # reported below, with the thread's count
            errors.append(repr(err))

    fresh = TSVStore(root / "world" / "features.tsv", root / "world" / "predictions.tsv", DIM)
    store = fresh  # the threads open the files themselves, at once
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(done) == 8 * 400
