"""Bad inputs and faults at the command line: each case is one bad file, setting or directory fed
to ``mvptr``; the answer must be one line ``mvptr: ...`` on stderr naming the file (and the line,
entry or image id where there is one) and exit status 2, never a traceback.

Every case builds its input by hand in a temporary directory from one small corpus (four images,
two captions each, in the real formats) and, for the commands that read one, one tiny model
directory trained for one step through the command line itself. docs/RELIABILITY.md lists them.
"""

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mvptr.cli import main

pytestmark = pytest.mark.slow  # trains a model directory, then runs every case through the command line

DIM = 134  # configs/tiny.yaml's region_feat_dim
IDS = ("1", "2", "3", "4")


# ----------------------------------------------------------------------------- building inputs

def _b64(x) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


def tsv(path: Path, lines, index=True) -> Path:
    """Rows as written (``lines``: strings without the newline), and their .lineidx."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [line.encode("utf-8") if isinstance(line, str) else line for line in lines]
    path.write_bytes(b"".join(d + b"\n" for d in data))
    if index:
        offsets, o = [], 0
        for d in data:
            offsets.append(o)
            o += len(d) + 1
        path.with_suffix(".lineidx").write_text("".join(f"{x}\n" for x in offsets))
    return path


def prediction(n=3, w=100, h=80, **extra):
    return {"image_h": h, "image_w": w, "num_boxes": n,
            "objects": [{"rect": [k, k, k + 10, k + 12], "class": "circle", "conf": 0.9} for k in range(n)], **extra}


def feature_rows(ids=IDS, n=3):
    rng = np.random.default_rng(0)
    return [f"{i}\t{n}\t{_b64(rng.random((n, DIM), dtype=np.float32))}" for i in ids]


def prediction_rows(ids=IDS):
    return [f"{i}\t{json.dumps(prediction())}" for i in ids]


def captions(ids=IDS):
    return [f"a red circle number {i}" for i in ids] + [f"two circles {i}" for i in ids]


def karpathy(ids=IDS):
    return {"images": [{"filename": f"{i}.png", "imgid": k, "split": "train" if k < 3 else "test",
                        "sentids": [2 * k, 2 * k + 1],
                        "sentences": [{"raw": f"a red circle number {i}", "sentid": 2 * k},
                                      {"raw": f"two circles {i}", "sentid": 2 * k + 1}]}
                       for k, i in enumerate(ids)]}


def cache_lines(ids=IDS):
    return [json.dumps({"caption": f"a red circle number {i}", "phrases": [["circle", "red"]],
                        "spans": [[[2, 5], [6, 12]]]}) for i in ids] + \
           [json.dumps({"caption": f"two circles {i}", "phrases": [["circle", "two"]], "spans": [[[0, 3], [4, 11]]]})
            for i in ids]


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.json").write_text(json.dumps(karpathy()))
    tsv(root / "features.tsv", feature_rows())
    tsv(root / "predictions.tsv", prediction_rows())
    (root / "phrases").mkdir(exist_ok=True)
    (root / "phrases" / "phrase_cache.jsonl").write_text("".join(line + "\n" for line in cache_lines()))
    return root


def data_args(root: Path):
    return [f"data.captions={root}/captions.json", f"data.features={root}/features.tsv",
            f"data.predictions={root}/predictions.tsv", f"data.phrase_cache={root}/phrases/phrase_cache.jsonl",
            f"data.phrase_vocab={root}/phrases/phrase_vocab.json", f"eval.entities_dir={root}/entities"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A good corpus with its phrase vocabulary, and a model directory trained on it for one step."""
    import contextlib
    import io

    root = write_corpus(tmp_path_factory.mktemp("base"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["prepare", "phrases", "--captions", str(root / "captions.json"), "--out", str(root / "phrases"),
                     "--min-count", "1"]) == 0
        assert main(["pretrain", "--config", "tiny", "--stage", "stage1", f"out_dir={root}/run",
                     "stage1.max_steps=1", "stage1.batch_size=2", *data_args(root)]) == 0
    assert (root / "run" / "stage1" / "model" / "model.safetensors").is_file()
    return root


def corpus(tmp: Path, base: Path) -> Path:
    """A copy of the good corpus (with its vocabulary), to spoil."""
    root = tmp / "c"
    shutil.copytree(base, root, ignore=shutil.ignore_patterns("run"))
    return root


def model_copy(tmp: Path, base: Path) -> Path:
    """A copy of the good model directory, to spoil."""
    return Path(shutil.copytree(base / "run" / "stage1" / "model", tmp / "model"))


# ----------------------------------------------------------------------------- running

def run(argv, capsys):
    """Exit status and stderr of ``mvptr argv`` (a SystemExit counts as the exit it carries)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as stop:
        rc = stop.code if isinstance(stop.code, int) else 1
    return rc, capsys.readouterr().err


PROGRESS = re.compile(r"^\s*\S*:?\s*\d+%\|")  # a tqdm bar written before the problem was met


def error_line(rc, err):
    """The one line of a refusal: exit 2, no traceback, one ``mvptr...`` line (progress bars aside)."""
    assert "Traceback" not in err, err
    lines = [x for line in err.splitlines() for x in line.split("\r") if x.strip() and not PROGRESS.match(x)]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("mvptr"), err
    return lines[0]


# ----------------------------------------------------------------------------- the cases

CASES = {}


def case(name):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


def phrases_cmd(root, captions=None, *extra):
    return ["prepare", "phrases", "--captions", captions or root / "captions.json", "--out", root / "phrases",
            "--min-count", "1", *extra]


def spoil_captions(name, text, where=()):
    """A case: ``prepare phrases`` over a captions file with content ``text`` (str, bytes or JSON)."""
    @case(f"captions: {name}")
    def _(tmp, base):
        root = corpus(tmp, base)
        f = root / "captions.json"
        if isinstance(text, bytes):
            f.write_bytes(text)
        elif isinstance(text, str):
            f.write_text(text)
        else:
            f.write_text(json.dumps(text(karpathy()) if callable(text) else text))
        return phrases_cmd(root), [f, *where]


def _set(path, value):
    """A function editing a Karpathy document: sets path (keys and indices) to value (or deletes it)."""
    def edit(doc):
        d = doc
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value
        return doc
    return edit


# --- captions JSON, through `prepare phrases` (every caption is cached: no parser is needed)
spoil_captions("not JSON", "images: none\n")
spoil_captions("truncated JSON", json.dumps(karpathy())[:60])
spoil_captions("empty file", "")
spoil_captions("a number, not an object", 42)
spoil_captions("an object without images", {"annotations": []})
spoil_captions("images not a list", {"images": {"1": {}}})
spoil_captions("an image entry not an object", {"images": ["1.png"]}, ["images[0]"])
spoil_captions("an image without split", _set(["images", 1, "split"], KeyError), ["images[1]"])
spoil_captions("an image without sentences", _set(["images", 2, "sentences"], KeyError), ["images[2]"])
spoil_captions("sentences not a list", _set(["images", 0, "sentences"], "a red circle"), ["images[0]"])
spoil_captions("an image without filename or cocoid", _set(["images", 3, "filename"], KeyError), ["images[3]"])
spoil_captions("a sentence not an object", _set(["images", 1, "sentences", 0], "two circles"),
               ["image 2, sentence 0"])
spoil_captions("an empty caption", _set(["images", 1, "sentences", 1, "raw"], ""), ["image 2, sentence 1"])
spoil_captions("a caption of spaces", _set(["images", 0, "sentences", 0, "raw"], "   "), ["image 1, sentence 0"])
spoil_captions("a caption that is a number", _set(["images", 2, "sentences", 0, "raw"], 7), ["image 3, sentence 0"])
spoil_captions("no raw, and tokens not strings", _set(["images", 2, "sentences", 1],
                                                      {"tokens": ["a", 1], "sentid": 5}), ["image 3, sentence 1"])
spoil_captions("sentid true", _set(["images", 0, "sentences", 1, "sentid"], True), ["image 1, sentence 1"])
spoil_captions("sentid a list", _set(["images", 0, "sentences", 0, "sentid"], [0]), ["image 1, sentence 0"])
spoil_captions("two file names of one stem", _set(["images", 1, "filename"], "sub/1.jpg"), ["images[1]", "images[0]"])
spoil_captions("one cocoid twice", lambda d: _set(["images", 1, "cocoid"], 9)(_set(["images", 0, "cocoid"], 9)(d)),
               ["images[1]", "image 9"])
spoil_captions("not UTF-8", "{\"images\": [\"caf\xe9\"]}".encode("latin-1"))
spoil_captions("no images at all", {"images": []})
spoil_captions("no image of the train split", lambda d: {"images": [{**img, "split": "val"} for img in d["images"]]})
spoil_captions("a caption list entry not an object", ["a red circle"], ["entry 0"])
spoil_captions("a caption list entry without caption", [{"image": "1.png", "split": "train"}], ["entry 0"])
spoil_captions("a caption list entry without image", [{"caption": "a red circle", "split": "train"}], ["entry 0"])
spoil_captions("a caption list entry with an empty caption list",
               [{"image": "1.png", "caption": [], "split": "train"}], ["entry 0"])
spoil_captions("a caption list caption that is a number",
               [{"image": "1.png", "caption": 5, "split": "train"}], ["entry 0"])


@case("captions: file missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return phrases_cmd(root, root / "nope.json"), [root / "nope.json"]


@case("captions: a directory, not a file")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "dir.json").mkdir()
    return phrases_cmd(root, root / "dir.json"), [root / "dir.json"]


@case("captions: {split} template that no file matches")
def _(tmp, base):
    root = corpus(tmp, base)
    return phrases_cmd(root, root / "ann_{split}.json"), [root / "ann_{split}.json"]


@case("captions: a caption list entry of another split than its file")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "ann_train.json").write_text(json.dumps([{"image": "1.png", "caption": "a red circle number 1",
                                                      "split": "test"}]))
    return phrases_cmd(root, root / "ann_{split}.json"), [root / "ann_train.json", "entry 0"]


@case("captions: --train-split that no caption has")
def _(tmp, base):
    root = corpus(tmp, base)
    return phrases_cmd(root, None, "--train-split", "tran"), [root / "captions.json", "tran"]


@case("prepare phrases: no --captions")
def _(tmp, base):
    return ["prepare", "phrases", "--out", tmp / "p"], ["--captions"]


@case("prepare phrases: --out is a file")
def _(tmp, base):
    root = corpus(tmp, base)
    (tmp / "file").write_text("x")
    return ["prepare", "phrases", "--captions", root / "captions.json", "--out", tmp / "file"], [tmp / "file"]


@case("prepare demo: --shard")
def _(tmp, base):
    return ["prepare", "demo", "--out", tmp / "d", "--shard", "0/2"], ["--shard"]


# --- the phrase cache, read by `prepare phrases` when it resumes
def spoil_cache(name, lines, where):
    @case(f"phrase cache: {name}")
    def _(tmp, base):
        root = corpus(tmp, base)
        f = root / "phrases" / "phrase_cache.jsonl"
        good = cache_lines()
        f.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines(good)))
        return phrases_cmd(root), [f, *where]


spoil_cache("a line that is not JSON", lambda g: [g[0], "{not json", *g[1:]], ["line 2"])
spoil_cache("a record without phrases", lambda g: [*g[:3], json.dumps({"caption": "two circles 1"}), *g[3:]],
            ["line 4"])
spoil_cache("a record that is a list", lambda g: [json.dumps(["circle", "red"]), *g], ["line 1"])
spoil_cache("a phrase of one word", lambda g: [*g, json.dumps({"caption": "x", "phrases": [["circle"]]})],
            ["line 9"])
spoil_cache("a phrase of four words",
            lambda g: [json.dumps({"caption": "y", "phrases": [["a", "b", "c", "d"]]}), *g], ["line 1"])
spoil_cache("phrases not a list", lambda g: [*g[:1], json.dumps({"caption": "z", "phrases": "circle red"}), *g[1:]],
            ["line 2"])
spoil_cache("a record of an earlier version, without spans",
            lambda g: [*g[:2], json.dumps({"caption": "two circles 1", "phrases": []}), *g[2:]], ["line 3"])
spoil_cache("spans outside the caption", lambda g: [*g, json.dumps({"caption": "a red circle", "phrases": [
    ["circle", "red"]], "spans": [[[2, 5], [6, 40]]]})], ["line 9"])
spoil_cache("spans not matching the phrases", lambda g: [json.dumps({"caption": "a red circle", "phrases": [
    ["circle", "red"]], "spans": []}), *g], ["line 1"])
spoil_cache("not UTF-8", lambda g: [*g[:2], b'{"caption": "caf\xe9", "phrases": []}', *g[2:]], ["line 3"])


@case("phrase cache: a directory in its place")
def _(tmp, base):
    root = corpus(tmp, base)
    f = root / "phrases" / "phrase_cache.jsonl"
    f.unlink()
    f.mkdir()
    return phrases_cmd(root), [f]


# --- ground-truth tags: `prepare tags`
def tags_case(name, doc, where=()):
    @case(f"COCO instances: {name}")
    def _(tmp, base):
        f = tmp / "instances.json"
        if isinstance(doc, str):
            f.write_text(doc)
        else:
            f.write_text(json.dumps(doc))
        return ["prepare", "tags", "--instances", f, "--out", tmp / "tags.json"], [f, *where]


GOOD_COCO = {"images": [{"id": 1, "file_name": "1.jpg"}], "categories": [{"id": 3, "name": "car"}],
             "annotations": [{"image_id": 1, "category_id": 3}]}
tags_case("not JSON", "{images")
tags_case("without annotations", {k: v for k, v in GOOD_COCO.items() if k != "annotations"})
tags_case("an annotation of an unknown category", {**GOOD_COCO, "annotations": [{"image_id": 1, "category_id": 9}]},
          ["annotation 0"])
tags_case("an annotation of an unknown image", {**GOOD_COCO, "annotations": [{"image_id": 2, "category_id": 3}]},
          ["annotation 0"])
tags_case("a category without name", {**GOOD_COCO, "categories": [{"id": 3}]}, ["category 0"])
tags_case("an image without id", {**GOOD_COCO, "images": [{"file_name": "1.jpg"}]}, ["image 0"])


@case("COCO instances: file missing")
def _(tmp, base):
    return ["prepare", "tags", "--instances", tmp / "nope.json", "--out", tmp / "t.json"], [tmp / "nope.json"]


@case("prepare tags: no --out")
def _(tmp, base):
    return ["prepare", "tags", "--instances", tmp / "i.json"], ["--out"]


# --- VinVL features and predictions TSV, through `features convert`
def convert_cmd(root, out=None, *extra):
    return ["features", "convert", "--features", root / "features.tsv", "--predictions", root / "predictions.tsv",
            "--out", out or root / "store", *extra]


def spoil_tsv(name, which, edit, where, extra=()):
    """A case: `features convert` with row 3 (image 3) of features.tsv or predictions.tsv replaced."""
    @case(f"{which} TSV: {name}")
    def _(tmp, base):
        root = corpus(tmp, base)
        rows = feature_rows() if which == "features" else prediction_rows()
        f = root / f"{which}.tsv"
        tsv(f, edit(rows))
        return convert_cmd(root, None, *extra), [f, *where]


def row3(text):
    return lambda rows: [*rows[:2], text, *rows[3:]]


ZEROS = np.zeros((3, DIM), dtype=np.float32)
spoil_tsv("four fields", "features", row3(f"3\t3\t{_b64(ZEROS)}\textra"), ["line 3", "image 3"])
spoil_tsv("one field", "features", row3("3"), ["line 3", "image 3"])
spoil_tsv("bad base64", "features", row3("3\t3\tnot*base64!"), ["line 3", "image 3"])
spoil_tsv("a byte length that is no multiple of 4", "features", row3(f"3\t3\t{base64.b64encode(b'abcdefg').decode()}"),
          ["line 3", "image 3"])
spoil_tsv("a feature width other than --feat-dim", "features", row3(f"3\t3\t{_b64(np.zeros((3, 100)))}"),
          ["line 3", "image 3", "width"], ["--feat-dim", str(DIM)])
spoil_tsv("num_boxes unlike the data", "features", row3(f"3\t2\t{_b64(ZEROS)}"), ["line 3", "image 3"],
          ["--feat-dim", str(DIM)])
spoil_tsv("a negative num_boxes", "features", row3(f"3\t-3\t{_b64(ZEROS)}"), ["line 3", "image 3"])
spoil_tsv("num_boxes 0 with data", "features", row3(f"3\t0\t{_b64(ZEROS)}"), ["line 3", "image 3"])
spoil_tsv("a JSON row that is not JSON", "features", row3("3\t{\"num_boxes\": 3, "), ["line 3", "image 3"])
spoil_tsv("a JSON row without num_boxes", "features", row3(f"3\t{json.dumps({'features': _b64(ZEROS)})}"),
          ["line 3", "image 3"])
spoil_tsv("inf values", "features", row3(f"3\t3\t{_b64(np.full((3, DIM), np.inf))}"), ["line 3", "image 3"])
spoil_tsv("an image listed twice", "features", lambda rows: [*rows, rows[1]], ["line 5", "image 2"])
spoil_tsv("a row that is not UTF-8", "features", row3(b"3\t3\t\xff\xfe"), ["line 3"])
spoil_tsv("widths that differ between images", "features", row3(f"3\t3\t{_b64(np.zeros((3, 100)))}"),
          ["image 3"])
spoil_tsv("a JSON row that is not JSON", "predictions", row3("3\t{\"objects\": ["), ["line 3", "image 3"])
spoil_tsv("a JSON number", "predictions", row3("3\t5"), ["line 3", "image 3"])
spoil_tsv("objects not a list", "predictions", row3(f"3\t{json.dumps(prediction(objects={'a': 1}))}"),
          ["line 3", "image 3"])
spoil_tsv("an object without class", "predictions",
          row3(f"3\t{json.dumps(prediction(n=1, objects=[{'rect': [1, 1, 5, 5], 'conf': 0.5}]))}"),
          ["line 3", "image 3", "object 0"])
spoil_tsv("a class that is a number", "predictions",
          row3(f"3\t{json.dumps(prediction(n=1, objects=[{'rect': [1, 1, 5, 5], 'class': 7}]))}"),
          ["line 3", "image 3", "object 0"])
spoil_tsv("a rect of 3 numbers", "predictions",
          row3(f"3\t{json.dumps(prediction(n=1, objects=[{'rect': [1, 1, 5], 'class': 'x'}]))}"),
          ["line 3", "image 3", "object 0"])
spoil_tsv("a rect of strings", "predictions",
          row3(f"3\t{json.dumps(prediction(n=1, objects=[{'rect': ['1', '1', '5', '5'], 'class': 'x'}]))}"),
          ["line 3", "image 3", "object 0"])
spoil_tsv("a box outside the image", "predictions",
          row3(f"3\t{json.dumps(prediction(n=1, objects=[{'rect': [1, 1, 500, 5], 'class': 'x'}]))}"),
          ["line 3", "image 3", "object 0"])
spoil_tsv("num_boxes unlike the objects", "predictions", row3(f"3\t{json.dumps(prediction(num_boxes=5))}"),
          ["line 3", "image 3"])
spoil_tsv("a conf that is a word", "predictions",
          row3(f"3\t{json.dumps(prediction(n=1, objects=[{'rect': [1, 1, 5, 5], 'class': 'x', 'conf': 'high'}]))}"),
          ["line 3", "image 3", "object 0", "conf"])
spoil_tsv("one field", "predictions", row3("3"), ["line 3", "image 3"])
spoil_tsv("an image missing", "predictions", lambda rows: rows[:2] + rows[3:], ["image 3"])


@case("features TSV: an index line that is no number")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "features.lineidx").write_text("0\nabc\n")
    return convert_cmd(root), [root / "features.lineidx", "line 2"]


@case("features TSV: file missing")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "features.tsv").unlink()
    return convert_cmd(root), [root / "features.tsv"]


@case("features TSV: .lineidx missing")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "features.lineidx").unlink()
    return convert_cmd(root), [root / "features.tsv", "build_lineidx"]


@case("predictions TSV: file missing")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "predictions.tsv").unlink()
    return convert_cmd(root), [root / "predictions.tsv"]


@case("hw.tsv: a size that is not a size")
def _(tmp, base):
    root = corpus(tmp, base)
    tsv(root / "predictions.tsv", [f"{i}\t{json.dumps(prediction()['objects'])}" for i in IDS])
    tsv(root / "hw.tsv", [f"{i}\t{json.dumps([{'height': 80, 'width': 100}])}" for i in IDS[:2]]
        + ['3\t[{"height": "tall"}]', f"4\t{json.dumps([{'height': 80, 'width': 100}])}"])
    return convert_cmd(root), [root / "hw.tsv", "line 3", "image 3"]


@case("features convert: --out exists")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "store").mkdir()
    return convert_cmd(root), [root / "store", "already exists"]


@case("features convert: no --predictions")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["features", "convert", "--features", root / "features.tsv", "--out", tmp / "s"], ["--predictions"]


@case("features convert: --feat-dim 0")
def _(tmp, base):
    root = corpus(tmp, base)
    return convert_cmd(root, None, "--feat-dim", "0"), ["--feat-dim"]


@case("features export: store missing")
def _(tmp, base):
    return ["features", "export", "--store", tmp / "nostore", "--out", tmp / "o"], [tmp / "nostore"]


@case("features export: a directory that is not a store")
def _(tmp, base):
    (tmp / "empty").mkdir()
    return ["features", "export", "--store", tmp / "empty", "--out", tmp / "o"], [tmp / "empty"]


@case("features export: --shard")
def _(tmp, base):
    return ["features", "export", "--store", tmp, "--out", tmp / "o", "--shard", "0/2"], ["--shard"]


@case("features extract: images directory missing")
def _(tmp, base):
    return ["features", "extract", "--images", tmp / "noimages", "--out", tmp / "o",
            "--weights", tmp / "det.safetensors"], [tmp / "noimages"]


@case("features extract: detector weights missing")
def _(tmp, base):
    (tmp / "images").mkdir()
    (tmp / "images" / "a.png").write_bytes(b"\x89PNG")
    return ["features", "extract", "--images", tmp / "images", "--out", tmp / "o",
            "--weights", tmp / "det.safetensors"], [tmp / "det.safetensors"]


@case("features extract: no --out")
def _(tmp, base):
    return ["features", "extract", "--images", tmp], ["--out"]


# --- merge-shards
@case("merge-shards: OUT is a file")
def _(tmp, base):
    (tmp / "out").write_text("x")
    return ["merge-shards", tmp / "out"], [tmp / "out"]


@case("merge-shards: a shard.json that is not JSON")
def _(tmp, base):
    for i in range(2):
        (tmp / "out" / f"shard-{i}-of-2").mkdir(parents=True)
        (tmp / "out" / f"shard-{i}-of-2" / "shard.json").write_text("{torn")
    return ["merge-shards", tmp / "out"], [tmp / "out" / "shard-0-of-2" / "shard.json"]


# --- configuration: presets, YAML files and key=value overrides (checked before any work)
def config_case(name, overrides, where, config="tiny"):
    @case(f"config: {name}")
    def _(tmp, base):
        return ["pretrain", "--config", config, f"out_dir={tmp}/run", *overrides], where


config_case("an unknown key", ["foo.bar=1"], ["foo.bar"])
config_case("a misspelt nested key", ["model.hiden_size=64"], ["model.hiden_size"])
config_case("an integer key given a word", ["model.hidden_size=abc"], ["model.hidden_size"])
config_case("a boolean key given a word", ["data.skip_bad=maybe"], ["data.skip_bad"])
config_case("a float key given a word", ["stage1.lr=fast"], ["stage1.lr"])
config_case("an override without =", ["stage1.epochs"], ["stage1.epochs", "key=value"])
config_case("an override with no key", ["=5"], ["''"])
config_case("a list key given a scalar", ["stage1.objectives=3"], ["stage1.objectives"])
config_case("heads that do not divide the width", ["model.num_heads=5"], ["model.num_heads"])
config_case("batch size 0", ["stage1.batch_size=0"], ["stage1.batch_size"])
config_case("a negative learning rate", ["stage2.lr=-1"], ["stage2.lr"])
config_case("warmup ratio above 1", ["stage1.warmup_ratio=2"], ["stage1.warmup_ratio"])
config_case("an unknown precision", ["stage1.precision=fp8"], ["stage1.precision"])
config_case("an unknown engine", ["stage2.engine=jax"], ["stage2.engine"])
config_case("an unknown objective", ["stage1.objectives=[mcr_v,foo]"], ["stage1.objectives", "foo"])
config_case("an unknown device", ["device=tpu"], ["device"])
config_case("negative threads", ["threads=-1"], ["threads"])
config_case("dropout of 1.5", ["model.dropout=1.5"], ["model.dropout"])
config_case("max_tokens 2", ["data.max_tokens=2"], ["data.max_tokens"])
config_case("max_regions 0", ["data.max_regions=0"], ["data.max_regions"])
config_case("a mask probability of 1", ["objectives.tag_mask_prob=1"], ["objectives.tag_mask_prob"])
config_case("wpg_layer beyond the layers", ["model.wpg_layer=9"], ["model.wpg_layer"])
config_case("an unknown pooling", ["model.global_pool=max"], ["model.global_pool"])
config_case("an unknown layout", ["model.layout=weird"], ["model.layout"])
config_case("an unknown matching", ["objectives.mcr_matching=greedy"], ["objectives.mcr_matching"])
config_case("eval batch size 0", ["eval.batch_size=0"], ["eval.batch_size"])
config_case("accumulation that does not divide the batch", ["stage1.grad_accum_steps=3"], ["stage1.grad_accum_steps"])
config_case("a negative max_train", ["finetune.vqa.max_train=-1"], ["finetune.vqa.max_train"])
config_case("a negative max_steps", ["stage1.max_steps=-1"], ["stage1.max_steps"])
config_case("zero epochs and no max_steps", ["stage1.epochs=0"], ["stage1.epochs"])
config_case("an unknown rerank score", ["eval.rerank_score=best"], ["eval.rerank_score"])
config_case("a corpus name with a slash", ["data.corpora=[{name: a/b, captions: c.json, features: f.tsv, "
                                           "phrase_cache: p.jsonl}]"], ["data.corpora", "a/b"])
config_case("an init.source directory that does not exist", ["init.source=/nonexistent/bert"],
            ["/nonexistent/bert"])
config_case("a preset that does not exist", [], ["nope", "presets"], config="nope")
config_case("an infinite learning rate", ["stage1.lr=inf"], ["stage1.lr", "finite"])
config_case("a NaN temperature", ["model.temperature=nan"], ["model.temperature", "finite"])
config_case("an infinite loss weight", ["stage2.loss_weights.mlm=inf"], ["stage2.loss_weights.mlm"])
config_case("max_tokens beyond the position table", ["data.max_tokens=600"], ["data.max_tokens", "512"])
config_case("a task's max_tokens beyond the position table", ["finetune.vqa.max_tokens=1000"],
            ["finetune.vqa.max_tokens"])
config_case("a section of no registered task", ["finetune.vqq.max_eval=3"],
            ["finetune.vqq", "registered tasks", "vqa"])
config_case("a misspelt key of a task", ["finetune.vqa.max_evals=3"], ["finetune.vqa.max_evals"])
config_case("a task given a word for a number", ["finetune.ve.max_eval=all"], ["finetune.ve.max_eval"])
config_case("a task's section given a number", ["finetune.vqa=3"], ["finetune.vqa", "settings"])
config_case("a demo world without training images", ["demo.n_train=0"], ["demo.n_train"])
config_case("a demo image side of 4 pixels", ["demo.image_size=4"], ["demo.image_size"])
config_case("no parsing processes", ["demo.n_process=0"], ["demo.n_process"])


def demo_world_case(name, flags, where):
    @case(f"prepare demo: {name}")
    def _(tmp, base):
        return ["prepare", "demo", "--out", tmp / "world", *flags], where


demo_world_case("no training images", ["--n-train", "0"], ["--n-train"])
demo_world_case("a negative number of training images", ["--n-train", "-5"], ["--n-train", "-5"])
demo_world_case("no test images", ["--n-test", "0"], ["--n-test"])
demo_world_case("an image side of 4 pixels", ["--image-size", "4"], ["--image-size", "32"])


def yaml_case(name, text, where=()):
    @case(f"config file: {name}")
    def _(tmp, base):
        f = tmp / "run.yaml"
        f.write_text(text)
        return ["pretrain", "--config", f, f"out_dir={tmp}/run"], [f, *where]


yaml_case("a YAML syntax error", "model:\n  hidden_size: [64\n")
yaml_case("a list, not a mapping", "- model\n- data\n")
yaml_case("an unknown key", "model:\n  hidden: 64\n", ["model.hidden"])
yaml_case("a wrong type", "stage1:\n  batch_size: many\n", ["stage1.batch_size"])
yaml_case("a tab in the indentation", "model:\n\thidden_size: 64\n")


@case("config file: missing")
def _(tmp, base):
    return ["pretrain", "--config", tmp / "none.yaml", f"out_dir={tmp}/run"], [tmp / "none.yaml"]


@case("config file: a directory")
def _(tmp, base):
    (tmp / "dir.yaml").mkdir()
    return ["pretrain", "--config", tmp / "dir.yaml", f"out_dir={tmp}/run"], [tmp / "dir.yaml"]


# --- pretrain: its data, its output directory and its start
def pretrain_cmd(tmp, root, *extra):
    return ["pretrain", "--config", "tiny", "--stage", "stage1", f"out_dir={tmp}/run", "stage1.max_steps=1",
            "stage1.batch_size=2", *data_args(root), *extra]


@case("pretrain: a batch larger than the data")
def _(tmp, base):
    root = corpus(tmp, base)
    return pretrain_cmd(tmp, root, "stage1.batch_size=64"), ["stage1", "batch", "64"]


@case("pretrain: captions file missing")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "captions.json").unlink()
    return pretrain_cmd(tmp, root), [root / "captions.json"]


@case("pretrain: phrase vocabulary missing")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "phrases" / "phrase_vocab.json").unlink()
    return pretrain_cmd(tmp, root), [root / "phrases" / "phrase_vocab.json"]


@case("pretrain: phrase vocabulary not JSON")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "phrases" / "phrase_vocab.json").write_text("{\"phrases\": [")
    return pretrain_cmd(tmp, root), [root / "phrases" / "phrase_vocab.json"]


@case("pretrain: phrase vocabulary of another shape")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "phrases" / "phrase_vocab.json").write_text(json.dumps(["red circle", "two circle"]))
    return pretrain_cmd(tmp, root), [root / "phrases" / "phrase_vocab.json"]


@case("pretrain: phrase cache missing")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "phrases" / "phrase_cache.jsonl").unlink()
    return pretrain_cmd(tmp, root), [root / "phrases" / "phrase_cache.jsonl"]


@case("pretrain: a caption's image without features")
def _(tmp, base):
    root = corpus(tmp, base)
    tsv(root / "features.tsv", feature_rows()[:1] + feature_rows()[2:])
    return pretrain_cmd(tmp, root), [root / "features.tsv", "image 2"]


@case("pretrain: a caption whose phrases are not cached")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "phrases" / "phrase_cache.jsonl").write_text("".join(x + "\n" for x in cache_lines()[1:]))
    return pretrain_cmd(tmp, root), [root / "phrases" / "phrase_cache.jsonl", "image 1, sentence 0"]


@case("pretrain: tag file missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return pretrain_cmd(tmp, root, f"data.tags={root}/tags.json"), [root / "tags.json"]


@case("pretrain: tag file with a label that is not a string")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "tags.json").write_text(json.dumps({i: ["circle", 3] for i in IDS}))
    return pretrain_cmd(tmp, root, f"data.tags={root}/tags.json"), [root / "tags.json", "image 1"]


@case("pretrain: image id map missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return pretrain_cmd(tmp, root, f"data.image_id_map={root}/ids.json"), [root / "ids.json"]


@case("pretrain: image id map not an object")
def _(tmp, base):
    root = corpus(tmp, base)
    (root / "ids.json").write_text("[1, 2]")
    return pretrain_cmd(tmp, root, f"data.image_id_map={root}/ids.json"), [root / "ids.json"]


@case("pretrain: out_dir is a file")
def _(tmp, base):
    root = corpus(tmp, base)
    (tmp / "run").write_text("x")
    return pretrain_cmd(tmp, root), [tmp / "run"]


@case("pretrain: --init-model without --stage stage2")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["pretrain", "--config", "tiny", "--init-model", tmp / "m", f"out_dir={tmp}/run",
            *data_args(root)], ["--init-model", "--stage stage2"]


@case("pretrain: --init-model directory missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["pretrain", "--config", "tiny", "--stage", "stage2", "--init-model", tmp / "nomodel", f"out_dir={tmp}/run",
            *data_args(root)], [tmp / "nomodel"]


@case("pretrain: stage 2 with no stage 1 model in out_dir")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["pretrain", "--config", "tiny", "--stage", "stage2", f"out_dir={tmp}/run", *data_args(root)], \
        [tmp / "run" / "stage1" / "model"]


@case("pretrain: --resume from a damaged training state")
def _(tmp, base):
    root = corpus(tmp, base)
    shutil.copytree(base / "run" / "stage1" / "model", tmp / "run" / "stage1" / "model")
    (tmp / "run" / "stage1" / "model" / "training_state.pt").write_bytes(b"PK\x03\x04 cut")
    return [*pretrain_cmd(tmp, root), "--resume"], [tmp / "run" / "stage1" / "model" / "training_state.pt"]


# --- model directories, through `evaluate`
def evaluate_cmd(tmp, root, model, *extra):
    return ["evaluate", "--model", model, "--out", tmp / "eval", "--config", "tiny", *data_args(root), *extra]


def spoil_model(name, edit, where):
    @case(f"model directory: {name}")
    def _(tmp, base):
        root = corpus(tmp, base)
        model = model_copy(tmp, base)
        edit(model)
        return evaluate_cmd(tmp, root, model), [model / w[1:] if w.startswith("@") else w for w in where]


def _json_edit(name, fn):
    def edit(model):
        f = model / name
        f.write_text(json.dumps(fn(json.loads(f.read_text()))))
    return edit


spoil_model("config.json missing", lambda m: (m / "config.json").unlink(), ["@config.json"])
spoil_model("config.json not JSON", lambda m: (m / "config.json").write_text("{\"model\": "), ["@config.json"])
spoil_model("config.json of another program", lambda m: (m / "config.json").write_text(json.dumps(
    {"architectures": ["BertModel"], "hidden_size": 64})), ["@config.json", "convert official"])
spoil_model("model.safetensors missing", lambda m: (m / "model.safetensors").unlink(), ["@", "no model.safetensors"])
spoil_model("model.safetensors damaged", lambda m: (m / "model.safetensors").write_bytes(b"\x00" * 64),
            ["@model.safetensors"])
spoil_model("model.safetensors cut short", lambda m: (m / "model.safetensors").write_bytes(
    (m / "model.safetensors").read_bytes()[:5000]), ["@model.safetensors"])
spoil_model("phrase_vocab.json not JSON", lambda m: (m / "phrase_vocab.json").write_text("[\"red"),
            ["@phrase_vocab.json"])
spoil_model("phrase_vocab.json of another size", lambda m: (m / "phrase_vocab.json").write_text(
    (m.parent / "c" / "phrases" / "phrase_vocab.json").read_text().replace("two circle", "two circle\", \"x")),
    ["@phrase_vocab.json"])
spoil_model("tag_vocab.json missing", lambda m: (m / "tag_vocab.json").unlink(), ["@tag_vocab.json"])
spoil_model("tokenizer.json missing", lambda m: (m / "tokenizer.json").unlink(), ["@", "tokenizer"])
spoil_model("a width unlike the weights", _json_edit("config.json", lambda c: {
    **c, "model": {**c["model"], "intermediate_size": 96}}), ["@model.safetensors", "shape"])
spoil_model("a model section with an unknown key", _json_edit("config.json", lambda c: {
    **c, "model": {**c["model"], "hidden": 64}}), ["@config.json", "hidden"])
spoil_model("inputs that are not booleans", _json_edit("config.json", lambda c: {**c, "inputs": {"tags": "yes"}}),
            ["@config.json"])
spoil_model("only a pickle file", lambda m: (m / "model.safetensors").rename(m / "pytorch_model.bin"),
            ["@pytorch_model.bin", "pickle"])


@case("model directory: missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return evaluate_cmd(tmp, root, tmp / "nomodel"), [tmp / "nomodel"]


@case("model directory: a file")
def _(tmp, base):
    root = corpus(tmp, base)
    (tmp / "modelfile").write_text("x")
    return evaluate_cmd(tmp, root, tmp / "modelfile"), [tmp / "modelfile"]


@case("evaluate: a model.* override that changes the weights' shapes")
def _(tmp, base):
    root = corpus(tmp, base)
    return evaluate_cmd(tmp, root, base / "run" / "stage1" / "model", "model.hidden_size=128"), ["model.hidden_size"]


@case("evaluate: --out is a file")
def _(tmp, base):
    root = corpus(tmp, base)
    (tmp / "eval").write_text("x")
    return evaluate_cmd(tmp, root, base / "run" / "stage1" / "model"), [tmp / "eval"]


@case("evaluate: an unknown task")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["evaluate", "captioning", "--model", base / "run" / "stage1" / "model", "--out", tmp / "e",
            "--config", "tiny", *data_args(root)], ["captioning"]


# --- task files: VQA v2, SNLI-VE and Flickr30k Entities, through `evaluate TASK`
def task_cmd(tmp, base, task, command, *extra):
    """`evaluate TASK` or `finetune TASK` (which reads the training split first) with the good model."""
    root = corpus(tmp, base)
    return [command, task, "--model", base / "run" / "stage1" / "model", "--out", tmp / "e", "--config", "tiny",
            *data_args(root), *extra]


QUESTIONS = {"questions": [{"image_id": 4, "question": "what color?", "question_id": 40}]}
ANNOTATIONS = {"annotations": [{"question_id": 40, "image_id": 4, "answers": [{"answer": "red"}] * 10,
                                "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what"}]}


def vqa_case(name, questions, annotations, where):
    @case(f"VQA: {name}")
    def _(tmp, base):
        q, a = tmp / "q_train.json", tmp / "a_train.json"
        for f, doc in ((q, questions), (a, annotations)):
            if doc is not None:
                f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return task_cmd(tmp, base, "vqa", "finetune", f"finetune.vqa.questions={tmp}/q_{{split}}.json",
                        f"finetune.vqa.annotations={tmp}/a_{{split}}.json"), \
            [q if w == "q" else a if w == "a" else w for w in where]


vqa_case("questions file missing", None, ANNOTATIONS, ["q"])
vqa_case("questions not JSON", "{\"questions\": [", ANNOTATIONS, ["q"])
vqa_case("no questions list", {"question": []}, ANNOTATIONS, ["q"])
vqa_case("a question without image_id", {"questions": [{"question": "?", "question_id": 1}]}, ANNOTATIONS,
         ["q", "question 0"])
vqa_case("a question_id that is not a number", {"questions": [{"image_id": 4, "question": "?", "question_id": "x"}]},
         ANNOTATIONS, ["q", "question 0"])
vqa_case("annotations not JSON", QUESTIONS, "[", ["a"])
vqa_case("no annotations list", QUESTIONS, {"annotation": []}, ["a"])
vqa_case("answers not a list", QUESTIONS, {"annotations": [{"question_id": 40, "answers": "red"}]},
         ["a", "annotation 0"])
vqa_case("a question without annotation", QUESTIONS, {"annotations": []}, ["a", "question 40"])
vqa_case("a question of an image without features",
         {"questions": [{"image_id": 99, "question": "?", "question_id": 40}]}, ANNOTATIONS,
         ["features.tsv", "image: 99"])


def ve_case(name, text, where):
    @case(f"SNLI-VE: {name}")
    def _(tmp, base):
        f = tmp / "ve_train.jsonl"
        if text is not None:
            f.write_text(text, encoding="utf-8", errors="surrogateescape")  # bytes as given
        return task_cmd(tmp, base, "ve", "finetune", f"finetune.ve.hypotheses={tmp}/ve_{{split}}.jsonl"), [f, *where]


GOOD_VE = json.dumps({"Flickr30K_ID": "4", "sentence2": "a circle", "gold_label": "entailment"})
ve_case("file missing", None, [])
ve_case("a line that is not JSON", GOOD_VE + "\n{\"Flickr30K_ID\": \n", [":2"])
ve_case("a line without sentence2", json.dumps({"Flickr30K_ID": "4", "gold_label": "neutral"}) + "\n", [":1"])
ve_case("a line without the image", json.dumps({"sentence2": "x", "gold_label": "neutral"}) + "\n", [":1"])
ve_case("a line that is a list", "[1, 2]\n", [":1"])
ve_case("a byte that is not UTF-8", GOOD_VE.replace("a circle", "a \udcff circle") + "\n", [" line 1", "UTF-8"])
ve_case("a capitalised label", json.dumps({"Flickr30K_ID": "4", "sentence2": "x", "gold_label": "Entailment"})
        + "\n", [":1", "Entailment"])


@case("SNLI-VE: an image without features")
def _(tmp, base):
    (tmp / "ve_train.jsonl").write_text(json.dumps({"Flickr30K_ID": "99", "sentence2": "x", "gold_label": "neutral"}))
    return task_cmd(tmp, base, "ve", "finetune", f"finetune.ve.hypotheses={tmp}/ve_{{split}}.jsonl"), \
        [tmp / "c" / "features.tsv", "image: 99"]


def entities_case(name, sentences, xml, where):
    @case(f"Flickr30k Entities: {name}")
    def _(tmp, base):
        d = tmp / "entities"
        (d / "Sentences").mkdir(parents=True)
        (d / "Annotations").mkdir(parents=True)
        (d / "Sentences" / "4.txt").write_text(sentences)
        if xml is not None:
            (d / "Annotations" / "4.xml").write_text(xml)
        names = {"s": d / "Sentences" / "4.txt", "x": d / "Annotations" / "4.xml"}
        return task_cmd(tmp, base, "grounding", "evaluate", f"eval.entities_dir={d}"), [names.get(w, w) for w in where]


SENTENCE = "[/EN#1/other a red circle] number 4\n"
XML = ("<annotation><size><width>100</width><height>80</height><depth>3</depth></size>"
       "<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>11</xmax><ymax>13</ymax></bndbox></object>"
       "</annotation>")
entities_case("malformed XML", SENTENCE, XML[:-5], ["x"])
entities_case("an XML without size", SENTENCE, XML.replace("<size>", "<sise>").replace("</size>", "</sise>"), ["x"])
entities_case("a width that is not a number", SENTENCE, XML.replace(">100<", ">wide<"), ["x", "size"])
entities_case("a corner that is not a number", SENTENCE, XML.replace("<xmin>1<", "<xmin>one<"), ["x", "object 0"])
entities_case("an object without name", SENTENCE, XML.replace("<name>1</name>", ""), ["x", "object 0"])
entities_case("a sentence with an unmatched bracket", "[/EN#1/other a red circle number 4\n", XML, ["s", "line 1"])
entities_case("a phrase without words", "[/EN#1/other ] number 4\n", XML, ["s", "line 1"])
entities_case("an annotation file missing (its sentences there)", SENTENCE, None, ["x", "s"])
entities_case("another root than <annotation>", SENTENCE, XML.replace("annotation>", "annot>"), ["x"])


@case("Flickr30k Entities: directory missing")
def _(tmp, base):
    return task_cmd(tmp, base, "grounding", "evaluate", f"eval.entities_dir={tmp}/none"), [tmp / "none"]


@case("evaluate vqa: a model without a task head")
def _(tmp, base):
    return task_cmd(tmp, base, "vqa", "evaluate"), [base / "run" / "stage1" / "model", "finetune vqa"]


# --- finetune
@case("finetune: --out is a file")
def _(tmp, base):
    root = corpus(tmp, base)
    (tmp / "ft").write_text("x")
    return ["finetune", "retrieval", "--model", base / "run" / "stage1" / "model", "--out", tmp / "ft",
            "--config", "tiny", *data_args(root)], [tmp / "ft"]


@case("finetune: model directory missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["finetune", "ve", "--model", tmp / "nomodel", "--out", tmp / "ft", "--config", "tiny",
            *data_args(root)], [tmp / "nomodel"]


@case("finetune: a bad override")
def _(tmp, base):
    return ["finetune", "vqa", "--model", tmp / "m", "--config", "tiny", "finetune.vqa.train.batch_size=-8"], \
        ["finetune.vqa.train.batch_size"]


# --- convert official
def official_case(name, files, where, *extra):
    @case(f"convert official: {name}")
    def _(tmp, base):
        src = tmp / "official"
        src.mkdir()
        for n, content in files.items():
            (src / n).write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["convert", "official", src, tmp / "ours", *extra], [src / w if "." in w else w for w in where]


official_case("no config.json", {"pytorch_model.bin": b"x", "id2phrase_new.json": "{}"}, ["config.json"])
official_case("a pickle without --trust-pickle", {"config.json": "{}", "pytorch_model.bin": b"\x80\x02}q\x00.",
                                                 "id2phrase_new.json": "{}"}, ["pytorch_model.bin", "--trust-pickle"])
official_case("a damaged pickle with --trust-pickle", {"config.json": json.dumps({"hidden_size": 64}),
                                                       "pytorch_model.bin": b"not a pickle",
                                                       "id2phrase_new.json": "{}"}, ["pytorch_model.bin"],
              "--trust-pickle")
official_case("no id2phrase_new.json", {"config.json": "{}", "pytorch_model.bin": b"x"}, ["id2phrase_new.json"],
              "--trust-pickle")


@case("convert official: source directory missing")
def _(tmp, base):
    return ["convert", "official", tmp / "none", tmp / "ours"], [tmp / "none"]


# --- search and serve
@case("search query: index missing")
def _(tmp, base):
    return ["search", "query", tmp / "noindex", "a red circle"], [tmp / "noindex"]


@case("search query: no sentence")
def _(tmp, base):
    return ["search", "query", tmp / "noindex"], ["sentence"]


@case("search query: index.json not JSON")
def _(tmp, base):
    (tmp / "index").mkdir()
    (tmp / "index" / "index.json").write_text("{\"format\": ")
    return ["search", "query", tmp / "index", "a red circle"], [tmp / "index" / "index.json"]


@case("search query: index.json of another program")
def _(tmp, base):
    (tmp / "index").mkdir()
    (tmp / "index" / "index.json").write_text(json.dumps({"format": "faiss"}))
    return ["search", "query", tmp / "index", "a red circle"], [tmp / "index" / "index.json"]


@case("search build: no --model")
def _(tmp, base):
    return ["search", "build", "--out", tmp / "index"], ["--model"]


@case("search build: model directory missing")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["search", "build", "--model", tmp / "nomodel", "--features", root / "features.tsv", "--predictions",
            root / "predictions.tsv", "--out", tmp / "index"], [tmp / "nomodel"]


@case("search build: features missing")
def _(tmp, base):
    return ["search", "build", "--model", base / "run" / "stage1" / "model", "--config", "tiny",
            "--features", tmp / "none.tsv", "--predictions", tmp / "p.tsv", "--out", tmp / "index"], \
        [tmp / "none.tsv"]


@case("serve: index missing")
def _(tmp, base):
    return ["serve", "--index", tmp / "noindex"], [tmp / "noindex"]


@case("serve: index.json not JSON")
def _(tmp, base):
    (tmp / "index").mkdir()
    (tmp / "index" / "index.json").write_text("[")
    return ["serve", "--index", tmp / "index"], [tmp / "index" / "index.json"]


# --- visualize, demo and ablate
@case("visualize curves: no metrics anywhere")
def _(tmp, base):
    return ["visualize", "curves", "--config", "tiny", "--out", tmp / "c.png", f"out_dir={tmp}/none"], [tmp / "none"]


@case("visualize curves: a metrics file missing")
def _(tmp, base):
    return ["visualize", "curves", "--config", "tiny", "--out", tmp / "c.png", "--metrics", tmp / "m.jsonl"], \
        [tmp / "m.jsonl"]


@case("visualize curves: a metrics line that is not JSON")
def _(tmp, base):
    (tmp / "m.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    return ["visualize", "curves", "--config", "tiny", "--out", tmp / "c.png", "--metrics", tmp / "m.jsonl"], \
        [tmp / "m.jsonl", "line 2"]


@case("visualize concepts: model directory missing")
def _(tmp, base):
    return ["visualize", "concepts", "--config", "tiny", "--model", tmp / "nomodel", "--out", tmp / "c.png"], \
        [tmp / "nomodel"]


@case("visualize concepts: a model whose config.json is not JSON")
def _(tmp, base):
    model = model_copy(tmp, base)
    (model / "config.json").write_text("{")
    return ["visualize", "concepts", "--config", "tiny", "--model", model, "--out", tmp / "c.png"], \
        [model / "config.json"]


@case("visualize grounding: an image id that is not in the data")
def _(tmp, base):
    root = corpus(tmp, base)
    return ["visualize", "grounding", "--config", "tiny", "--model", base / "run" / "stage1" / "model",
            "--image-id", "nope", "--out", tmp / "g.png", *data_args(root)], ["nope"]


@case("demo: a bad override")
def _(tmp, base):
    return ["demo", "--config", "tiny", f"out_dir={tmp}/demo", "demo.n_train=many"], ["demo.n_train"]


@case("ablate: an unknown row")
def _(tmp, base):
    return ["ablate", "--config", "tiny", "--rows", "full,no_magic", "--out", tmp / "ab", f"out_dir={tmp}/r",
            f"demo.data_dir={tmp}/demo"], ["no_magic"]


@case("ablate: zero seeds")
def _(tmp, base):
    return ["ablate", "--config", "tiny", "--rows", "full", "--seeds", "0", "--out", tmp / "ab", f"out_dir={tmp}/r",
            f"demo.data_dir={tmp}/demo"], ["--seeds"]


@case("ablate: a budget outside (0, 1]")
def _(tmp, base):
    return ["ablate", "--config", "tiny", "--rows", "full", "--budget", "0", "--out", tmp / "ab", f"out_dir={tmp}/r",
            f"demo.data_dir={tmp}/demo"], ["--budget"]


# ----------------------------------------------------------------------------- the test

# --- an output over, into or around the command's own input (nothing is written)
def overlap_case(name, argv_of, where_of):
    @case(f"output over its input: {name}")
    def _(tmp, base):
        model = model_copy(tmp, base)
        return argv_of(tmp, base, model), where_of(tmp, model)


def _finetune(tmp, base, model, out):
    return ["finetune", "retrieval", "--model", model, "--out", out, "--config", "tiny",
            *data_args(corpus(tmp, base))]


overlap_case("finetune --out holding --model", lambda t, b, m: _finetune(t, b, m, m.parent),
             lambda t, m: ["--model", str(m.parent), str(m), "holds"])
overlap_case("finetune --out the model directory", lambda t, b, m: _finetune(t, b, m, m),
             lambda t, m: ["--model", str(m), " is "])
overlap_case("evaluate --out the model directory",
             lambda t, b, m: ["evaluate", "--model", m, "--out", m, "--config", "tiny", *data_args(corpus(t, b))],
             lambda t, m: ["--model", str(m / "eval.json"), "lies inside"])
@case("output over its input: pretrain stage 2 onto its --init-model")
def _(tmp, base):
    model = shutil.copytree(model_copy(tmp, base), tmp / "run" / "stage2" / "model")  # a stage 2 to start from
    return ["pretrain", "--config", "tiny", "--stage", "stage2", "--init-model", model, f"out_dir={tmp}/run",
            *data_args(corpus(tmp, base))], ["--init-model", tmp / "run" / "stage2", "holds"]
overlap_case("search build --out the model directory",
             lambda t, b, m: ["search", "build", "--model", m, "--out", m, "--config", "tiny",
                              "--features", corpus(t, b) / "features.tsv"],
             lambda t, m: ["--model", str(m)])
overlap_case("features extract --out inside --images",
             lambda t, b, m: ["features", "extract", "--images", t / "images", "--out", t / "images" / "f"],
             lambda t, m: ["--images", str(t / "images" / "f"), "lies inside"])
overlap_case("convert official into its own checkpoint directory",
             lambda t, b, m: ["convert", "official", m, m / "ours"],
             lambda t, m: ["checkpoint directory", str(m / "ours")])
overlap_case("visualize --out inside the model directory",
             lambda t, b, m: ["visualize", "concepts", "--config", "tiny", "--model", m, "--out", m / "c.png"],
             lambda t, m: ["--model", str(m / "c.png")])


# --- data used in part without a word (docs/RELIABILITY.md): each record is now an error naming it
spoil_captions("an image whose split is null", _set(["images", 1, "split"], None), ["images[1]", "None"])
spoil_captions("an image of an unknown split", _set(["images", 2, "split"], "tran"), ["images[2]", "'tran'"])


@case("Flickr30k Entities: a sentences file missing (its annotation there)")
def _(tmp, base):
    d = tmp / "entities"
    (d / "Sentences").mkdir(parents=True)
    (d / "Annotations").mkdir(parents=True)
    (d / "Annotations" / "4.xml").write_text(XML)
    return task_cmd(tmp, base, "grounding", "evaluate", f"eval.entities_dir={d}"), [d / "Sentences" / "4.txt",
                                                                                    "image 4"]


vqa_case("one question of an image without features",
         {"questions": [*QUESTIONS["questions"], {"image_id": 99, "question": "what shape?", "question_id": 41}]},
         {"annotations": [*ANNOTATIONS["annotations"], {**ANNOTATIONS["annotations"][0], "question_id": 41,
                                                          "image_id": 99}]},
         ["q", "question 41", "image: 99", "features.tsv"])
vqa_case("an annotations path that matches no file", QUESTIONS, None, ["a", "q"])


@case("SNLI-VE: one hypothesis of an image without features")
def _(tmp, base):
    f = tmp / "ve_train.jsonl"
    f.write_text(GOOD_VE + "\n" + json.dumps({"Flickr30K_ID": "99", "sentence2": "x", "gold_label": "neutral"}) + "\n")
    return task_cmd(tmp, base, "ve", "finetune", f"finetune.ve.hypotheses={tmp}/ve_{{split}}.jsonl"), \
        [f"{f}:2", "image: 99", tmp / "c" / "features.tsv"]


HUGE = np.full((3, DIM), 1e30, dtype=np.float32)
spoil_tsv("values of 1e30", "features", row3(f"3\t3\t{_b64(HUGE)}"), ["line 3", "image 3", "1e+30"])


@case("pretrain: features of 1e30")
def _(tmp, base):
    root = corpus(tmp, base)
    tsv(root / "features.tsv", row3(f"3\t3\t{_b64(HUGE)}")(feature_rows()))
    return pretrain_cmd(tmp, root, "stage1.max_steps=3"), [root / "features.tsv", "line 3", "image 3"]
# --- settings that were accepted without effect, files named, the port of `serve`
def built_index(tmp, base) -> Path:
    """An index of the good corpus, built through the command line, to spoil."""
    import contextlib
    import io

    root = corpus(tmp, base)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["search", "build", "--model", str(base / "run" / "stage1" / "model"), "--config", "tiny",
                     "--features", str(root / "features.tsv"), "--predictions", str(root / "predictions.tsv"),
                     "--out", str(tmp / "index")]) == 0
    return tmp / "index"


for _flag, _value in (("--top", "0"), ("--top", "-1"), ("--top", "101"), ("--rerank", "-5"), ("--rerank", "201")):
    @case(f"search query: {_flag} {_value}")
    def _(tmp, base, flag=_flag, value=_value):
        return ["search", "query", tmp / "noindex", "a red circle", flag, value], [f"{flag} {value}", "expected"]


@case("search query: embeddings.npy truncated")
def _(tmp, base):
    index = built_index(tmp, base)
    data = (index / "embeddings.npy").read_bytes()
    (index / "embeddings.npy").write_bytes(data[: len(data) // 2])
    return ["search", "query", index, "a red circle"], [index / "embeddings.npy", "mvptr search build"]


@case("search query: ids.json not JSON")
def _(tmp, base):
    index = built_index(tmp, base)
    (index / "ids.json").write_text('["1", "2"')
    return ["search", "query", index, "a red circle"], [index / "ids.json", "mvptr search build"]


@case("search query: files.json not JSON")
def _(tmp, base):
    index = built_index(tmp, base)
    (index / "files.json").write_text("{")
    return ["search", "query", index, "a red circle"], [index / "files.json", "mvptr search build"]


@case("search build --add: ids.json of the index not JSON")
def _(tmp, base):
    index = built_index(tmp, base)
    (index / "ids.json").write_text("[")
    root = tmp / "c"
    return ["search", "build", "--add", "--model", base / "run" / "stage1" / "model", "--features",
            root / "features.tsv", "--predictions", root / "predictions.tsv", "--out", index], \
        [index / "ids.json", "mvptr search build"]


@case("model directory: tokenizer.json corrupt")
def _(tmp, base):
    model = model_copy(tmp, base)
    (model / "tokenizer.json").write_text('{"version": ')
    return ["visualize", "concepts", "--config", "tiny", "--model", model, "--out", tmp / "c.png"], \
        [model / "tokenizer.json", "copy the tokenizer files"]


@case("model directory: model.safetensors truncated")
def _(tmp, base):
    model = model_copy(tmp, base)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return ["visualize", "concepts", "--config", "tiny", "--model", model, "--out", tmp / "c.png"], \
        [model / "model.safetensors", "truncated or damaged"]


@case("model directory: config.json of a newer format")
def _(tmp, base):
    model = model_copy(tmp, base)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "format": "mvptr/2"}))
    return ["visualize", "concepts", "--config", "tiny", "--model", model, "--out", tmp / "c.png"], \
        [model / "config.json", "'mvptr/2'", "reads mvptr/1"]


@case("serve: --port 99999")
def _(tmp, base):
    pytest.importorskip("uvicorn")
    return ["serve", "--index", tmp / "noindex", "--port", "99999"], ["--port 99999", "0 to 65535"]


BUSY = []  # sockets that hold a port while a case runs


@case("serve: a port in use")
def _(tmp, base):
    import socket

    pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    BUSY.append(sock)
    port = sock.getsockname()[1]
    return ["serve", "--index", tmp / "noindex", "--port", port], [f"127.0.0.1:{port}", "in use"]


@case("serve: --detector-kind without --detector")
def _(tmp, base):
    pytest.importorskip("uvicorn")
    return ["serve", "--index", tmp / "noindex", "--port", "0", "--detector-kind", "frcnn"], \
        ["--detector-kind frcnn", "--detector FILE"]


def test_evaluating_a_stage_1_model_reports_uni_modal_figures_only(base, tmp_path, capsys):
    root = corpus(tmp_path, base)
    model = base / "run" / "stage1" / "model"
    capsys.readouterr()
    argv = ["evaluate", "--model", model, "--out", tmp_path / "ev", "--config", "tiny", *data_args(root)]
    assert main([str(a) for a in argv]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mvptr")]
    assert len(err) == 1 and "ITM head was never trained" in err[0] and str(model) in err[0], err
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())["retrieval"]
    assert "uni" in result and result["rerank"].startswith("not measured")


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_is_one_line_and_exit_2(name, base, tmp_path, capsys):
    argv, names = CASES[name](tmp_path, base)
    line = error_line(*run(argv, capsys))
    for n in names:
        assert str(n) in line, f"{n} not in {line!r}"


def test_the_corpus_is_large():
    assert len(CASES) >= 116


# --- handled without an error, by design
def test_a_captions_file_with_a_byte_order_mark_is_read(base, tmp_path, capsys):
    root = corpus(tmp_path, base)
    f = root / "captions.json"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    rc, err = run(phrases_cmd(root), capsys)
    assert rc == 0, err


@pytest.mark.parametrize("argv", [["pretrain", "--config", "nope"], ["search", "query", "{tmp}/noindex", "a dog"]])
def test_the_installed_command_exits_2_with_one_line(argv, tmp_path):
    """The same answer from a separate process: the exit status is the process's own."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "mvptr", *[a.format(tmp=tmp_path) for a in argv]],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("mvptr"), proc.stderr


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("output over its input")))
def test_a_refused_output_leaves_the_input_as_it_was(name, base, tmp_path, capsys):
    argv, _ = CASES[name](tmp_path, base)
    model = tmp_path / "model"
    before = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    error_line(*run(argv, capsys))
    assert {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()} == before
