"""`mvptr doctor`: on a complete copy of the tiny world every check is ok (exit 0); on a copy
with one thing broken the check of that thing fails with the run's own one-line error (exit 2),
and the checks after it are not made."""

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.formats.captions import read_captions
from mvptr.formats.tsv import build_lineidx
from mvptr.text.phrases import PhraseVocab
from mvptr.vision.store_convert import convert_vinvl_to_memmap
from mvptr.workflows import doctor

FILES = ("captions.json", "features.tsv", "features.lineidx", "predictions.tsv", "predictions.lineidx", "phrases",
         "vqa", "snli_ve")
# the tiny preset names the task files of vqa, ve and easyvqa under data.root: they are checked
# too, and easy-VQA's, which the folder lacks, is a warning (pre-training does not read them)
ALL_OK = ("device", "precision", "init", "captions", "features", "image coverage", "phrase cache", "phrase vocab",
          "task vqa", "task ve", "task easyvqa", "disk")


@pytest.fixture
def folder(world, tmp_path):
    """A copy of the tiny world's pre-training files, and the overrides that point a run at it."""
    root = tmp_path / "data"
    root.mkdir()
    for name in FILES:
        (shutil.copytree if (world / name).is_dir() else shutil.copy)(world / name, root / name)
    args = [f"out_dir={tmp_path / 'run'}", f"data.root={root}", f"data.captions={root}/captions.json",
            f"data.features={root}/features.tsv",
            f"data.predictions={root}/predictions.tsv", f"data.phrase_cache={root}/phrases/phrase_cache.jsonl",
            f"data.phrase_vocab={root}/phrases/phrase_vocab.json", f"eval.entities_dir={world}/flickr30k_entities"]
    return root, args


def doctor_run(capsys, *argv):
    """Exit status, the check lines by name (status, detail), and stderr of ``mvptr doctor``."""
    capsys.readouterr()
    rc = main(["doctor", "--config", "tiny", *map(str, argv)])
    out, err = capsys.readouterr()
    lines = {}
    for line in out.splitlines():
        status, _, rest = line.partition("  ")
        if status.strip() in ("ok", "warn", "FAIL"):
            name, _, detail = rest.strip().partition("  ")
            lines[name.strip()] = (status.strip(), detail.strip())
    return rc, lines, err


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvptr: ") and "Traceback" not in err, err
    return lines[0]


def test_a_complete_folder_is_all_ok(folder, capsys):
    root, args = folder
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 0 and err == ""
    assert list(lines) == list(ALL_OK)
    assert {name for name, (status, _) in lines.items() if status != "ok"} == {"task easyvqa"}, lines
    assert lines["task easyvqa"][0] == "warn"
    records = read_captions(root / "captions.json")
    images = len({r.image_id for r in records})
    train = sum(r.split == "train" for r in records)
    assert f"{len(records)} captions of {images} images" in lines["captions"][1]
    assert f"all {images} captioned images have region features" in lines["image coverage"][1]
    assert f"{train} of {train} training captions have phrases" in lines["phrase cache"][1]
    assert "3 records read in full" in lines["features"][1]
    assert "2 checkpoints kept" in lines["disk"][1]


def test_a_missing_caption_file_fails_naming_it(folder, capsys):
    root, args = folder
    (root / "captions.json").unlink()
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 2 and lines["captions"][0] == "FAIL"
    assert "features" not in lines  # nothing after the first blocking problem
    line = one_line(err)
    assert str(root / "captions.json") in line and "file not found" in line


def test_a_corrupt_caption_file_names_its_line(folder, capsys):
    root, args = folder
    path = root / "captions.json"
    text = json.dumps(json.loads(path.read_text()), indent=1).splitlines()
    bad = next(n for n, x in enumerate(text, 1) if n > 10 and '"' in x)  # inside the first image's entry
    text[bad - 1] = text[bad - 1].replace('"', "", 1)  # its opening quote gone
    path.write_text("\n".join(text))
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 2 and lines["captions"][0] == "FAIL"
    line = one_line(err)
    assert str(path) in line and f"line {bad} " in line, line


def _drop_rows(tsv: Path, ids: set) -> None:
    rows = [r for r in tsv.read_bytes().split(b"\n") if r and r.split(b"\t", 1)[0].decode() not in ids]
    tsv.write_bytes(b"".join(r + b"\n" for r in rows))
    build_lineidx(tsv)


def _missing_features(root: Path) -> list[str]:
    ids = sorted({r.image_id for r in read_captions(root / "captions.json")})
    gone = ids[5:10]
    for name in ("features.tsv", "predictions.tsv"):
        _drop_rows(root / name, set(gone))
    return gone


def test_a_store_without_some_captioned_images_fails_with_their_count(folder, capsys):
    root, args = folder
    gone = _missing_features(root)
    images = len({r.image_id for r in read_captions(root / "captions.json")})
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 2 and lines["features"][0] == "ok" and lines["image coverage"][0] == "FAIL"
    line = one_line(err)
    assert f"{len(gone)} of {images} captioned images have no region features (first: {gone[0]}" in line
    assert str(root / "features.tsv") in line


def test_with_skip_bad_missing_features_are_a_warning(folder, capsys):
    root, args = folder
    gone = _missing_features(root)
    rc, lines, err = doctor_run(capsys, *args, "data.skip_bad=true")
    assert rc == 0 and lines["image coverage"][0] == "warn" and f"{len(gone)} of" in lines["image coverage"][1]
    assert "disk" in lines


def test_a_phrase_cache_not_covering_the_captions_fails_with_the_count(folder, capsys):
    root, args = folder
    cache = root / "phrases" / "phrase_cache.jsonl"
    records = [json.loads(x) for x in cache.read_text().splitlines()]
    train = {r.caption for r in read_captions(root / "captions.json") if r.split == "train"}
    dropped = [r for r in records if r["caption"] in train][:7]
    cache.write_text("".join(json.dumps(r) + "\n" for r in records if r not in dropped))
    per_caption = collections.Counter(r.caption for r in read_captions(root / "captions.json") if r.split == "train")
    lacking = sum(per_caption[r["caption"]] for r in dropped)
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 2 and lines["phrase cache"][0] == "FAIL"
    line = one_line(err)
    assert f"no phrases for {lacking} of {sum(per_caption.values())} training captions" in line
    assert str(cache) in line and "mvptr prepare phrases" in line


def test_an_absent_phrase_cache_fails_naming_it(folder, capsys):
    root, args = folder
    cache = root / "phrases" / "phrase_cache.jsonl"
    cache.unlink()
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 2 and lines["phrase cache"][0] == "FAIL"
    assert str(cache) in one_line(err)


def test_too_little_disk_fails(folder, capsys, monkeypatch):
    _, args = folder
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    rc, lines, err = doctor_run(capsys, *args)
    assert rc == 2 and lines["disk"][0] == "FAIL" and lines["phrase vocab"][0] == "ok"
    line = one_line(err)
    assert "1 MiB free" in line and "out_dir" in line


def test_the_checkpoint_estimate_is_the_real_model_s_weights(world, world_args, tmp_path):
    cfg = load_config("tiny", world_args(tmp_path))
    vocab = PhraseVocab.load(cfg.data.phrase_vocab)
    real = new_bundle(cfg, vocab, ["circle"]).model
    real_bytes = sum(t.numel() * t.element_size() for t in real.state_dict().values())
    params, weights, one = doctor.checkpoint_estimate(cfg, len(vocab), 1)
    _, _, two = doctor.checkpoint_estimate(cfg, len(vocab), 2)
    assert params == sum(p.numel() for p in real.parameters())
    assert abs(weights - real_bytes) < 64  # the tag classes' rows (one here, one there)
    assert two - one == 3 * weights + 16 * 2**20  # weights and AdamW's two moments, plus vocabularies


def test_the_device_must_be_there(folder, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    _, args = folder
    rc, lines, err = doctor_run(capsys, *args, "device=cuda")
    assert rc == 2 and lines["device"][0] == "FAIL" and list(lines) == ["device"]
    assert "device=cuda" in one_line(err)


def _task_args(world, split_files=True):
    vqa = world / "vqa"
    return [f"finetune.vqa.questions={vqa}/v2_OpenEnded_demo_{{split}}_questions.json",
            f"finetune.vqa.annotations={vqa}/v2_demo_{{split}}_annotations.json" if split_files else
            f"finetune.vqa.annotations={vqa}/none_{{split}}.json"]


def test_a_task_s_files_are_checked(folder, world, capsys):
    _, args = folder
    rc, lines, _ = doctor_run(capsys, "--task", "vqa", *args, *_task_args(world))
    assert rc == 0 and lines["task vqa"][0] == "ok", lines
    questions = json.loads((world / "vqa" / "v2_OpenEnded_demo_train_questions.json").read_text())["questions"]
    assert f"train {len(questions)} questions" in lines["task vqa"][1]
    assert "3 checkpoints kept" in lines["disk"][1]  # one per stage and one for the task


def test_a_task_named_by_the_run_is_an_error_and_one_only_named_a_warning(folder, world, capsys):
    _, args = folder
    rc, lines, err = doctor_run(capsys, "--task", "vqa", *args, *_task_args(world, split_files=False))
    assert rc == 2 and lines["task vqa"][0] == "FAIL" and "none_train.json" in one_line(err)
    rc, lines, err = doctor_run(capsys, *args, *_task_args(world, split_files=False))
    assert rc == 0 and lines["task vqa"][0] == "warn" and "--task vqa" in lines["task vqa"][1]


def test_a_memmap_store_is_checked_by_its_index_and_a_few_records(folder, capsys):
    root, args = folder
    convert_vinvl_to_memmap(root / "features.tsv", root / "predictions.tsv", root / "store", progress=False)
    rc, lines, _ = doctor_run(capsys, *args, f"data.features={root}/store")
    assert rc == 0 and lines["features"][0] == "ok"
    assert "memmap store, 128 images" in lines["features"][1] and "3 records read in full" in lines["features"][1]


def test_each_corpus_of_a_mix_is_checked_under_its_name(folder, capsys):
    root, args = folder
    corpus = (f"{{name: NAME, captions: {root}/captions.json, features: {root}/features.tsv, "
              f"predictions: {root}/predictions.tsv, phrase_cache: {root}/phrases/phrase_cache.jsonl}}")
    mix = f"data.corpora=[{corpus.replace('NAME', 'a')},{corpus.replace('NAME', 'b')}]"
    rc, lines, err = doctor_run(capsys, *args, mix)
    assert rc == 0, err
    assert [n for n in lines if n.startswith(("a: ", "b: "))] == [
        f"{c}: {what}" for c in "ab" for what in ("captions", "features", "image coverage", "phrase cache")]


def test_without_stages_or_tasks_no_checkpoint_is_counted(folder, capsys):
    _, args = folder
    rc, lines, _ = doctor_run(capsys, "--stage", "none", *args)
    assert rc == 0 and lines["disk"] == ("ok", "no checkpoint to write (--stage none and no --task)")
    assert lines["precision"][1] == "eval fp32"
