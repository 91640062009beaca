"""The fine-tuning checks of ``mvptr doctor``: the files of each task a run will fine-tune on
(VQA questions and annotations, SNLI-VE hypotheses, the Flickr30k Entities folder, the task's
own feature store), read by the task readers, and whether the task's images have features.

Which tasks: those named with ``--task`` (a problem stops the check, as it would stop the run),
and those whose files the preset or an override names (a problem is a warning: a pre-training
run does not read them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..core.config import Config, TaskConfig, load_config
from ..core.errors import FormatError, MvptrError
from ..data.pretrain import ImageSource, data_captions
from ..data.tasks import TaskImages
from ..formats.entities import read_flickr30k_sentences
from ..formats.snli_ve import read_snli_ve
from ..formats.vqa import read_vqa
from ..tasks.grounding import Grounding
from ..tasks.retrieval import Retrieval
from ..tasks.table import task_named
from ..tasks.ve import VisualEntailment
from ..tasks.vqa import VQA
from .doctor_data import Check

FILE_FIELDS = ("questions", "annotations", "hypotheses", "features", "predictions")


def named_tasks(preset: str | None, overrides: list[str]) -> list[str]:
    """The tasks whose files the preset or an override names (``finetune.<task>.questions``, ...):
    the sections as they are written, before the tasks' defaults fill them in."""
    written = load_config(preset, overrides).finetune
    return [task for task, settings in written.items() if isinstance(settings, dict)
            and any(settings.get(f) for f in FILE_FIELDS)]


def _task_images(cfg: Config, t: TaskConfig) -> tuple[TaskImages, str]:
    """The task's feature store (its own files, or the pre-training ones) as the task reads it."""
    d = cfg.data
    features, predictions = t.features or d.features, t.predictions or d.predictions
    source = ImageSource(features, predictions, cfg.model.region_feat_dim, d.max_regions, d.max_tags)
    return TaskImages(source), features


def _coverage(images: TaskImages, features: str, image_ids: list[str], what: str) -> tuple[str, str]:
    """The status and the line of how many of a task's images have region features."""
    ids = sorted(set(image_ids))
    missing = [i for i in ids if images.key(i) is None]
    if missing and len(missing) == len(ids):
        raise FormatError(f"{features}: none of the {len(ids)} images of the {what} has region features (first: "
                          f"{missing[0]}); give the task the features of its images (finetune.<task>.features)",
                          "no task images")
    if not missing:
        return "ok", f"all {len(ids)} images with features"
    return "warn", (f"{len(ids) - len(missing)} of {len(ids)} images with features (first without: {missing[0]}; "
                    "their samples stop the run, data.skip_bad leaves them out)")


def _vqa(cfg: Config, task: str, t: TaskConfig) -> Check:
    parts = [(p, True) for p in t.train_split.split("+")] + [(p, False) for p in t.eval_split.split("+")]
    questions, notes = [], []
    for part, training in parts:
        q = t.questions.format(split=part)
        ann = t.annotations.format(split=part) if t.annotations else ""
        if not (ann and Path(ann).exists()):
            if training:
                raise FormatError(f"{ann or 'finetune.' + task + '.annotations'}: file not found; training needs the "
                                  f"answers of {q} (finetune.{task}.annotations)", "file not found")
            notes.append(f"{part} has no annotations (a results file, no accuracy)")
            ann = ""
        read = read_vqa(q, ann or None)
        questions += read
        notes.append(f"{part} {len(read)} questions")
    images, features = _task_images(cfg, t)
    status, covered = _coverage(images, features, [q.image_id for q in questions], f"{task} questions")
    return Check(status, f"task {task}", f"{t.questions}: {'; '.join(notes)}; {covered}")


def _ve(cfg: Config, task: str, t: TaskConfig) -> Check:
    pairs, notes = [], []
    for split in dict.fromkeys([t.train_split, t.eval_split]):
        read = read_snli_ve(t.hypotheses.format(split=split))
        pairs += read
        notes.append(f"{split} {len(read)} pairs" + (f" ({read.unlabelled} unlabelled)" if read.unlabelled else ""))
    images, features = _task_images(cfg, t)
    status, covered = _coverage(images, features, [p.image_id for p in pairs], f"{task} pairs")
    return Check(status, f"task {task}", f"{t.hypotheses}: {'; '.join(notes)}; {covered}")


def _grounding(cfg: Config, task: str, t: TaskConfig) -> Check:
    root = Path(cfg.eval.entities_dir)
    notes = []
    for split in dict.fromkeys([t.train_split, t.eval_split]):
        ids = sorted({r.image_id for r in data_captions(cfg.data, [split])})
        found = [i for i in ids if (root / "Sentences" / f"{i}.txt").exists()
                 and (root / "Annotations" / f"{i}.xml").exists()]
        if not found:
            raise FormatError(f"{root}: no Flickr30k Entities files for the {len(ids)} {split!r} images (expected "
                              "Sentences/<image>.txt and Annotations/<image>.xml; eval.entities_dir)", "file not found")
        sentences = read_flickr30k_sentences(root / "Sentences" / f"{found[0]}.txt")
        notes.append(f"{split} {len(found)} of {len(ids)} images ({len(sentences)} sentences in the first)")
    return Check("ok", f"task {task}", f"{root}: {'; '.join(notes)}")


def _retrieval(cfg: Config, task: str, t: TaskConfig) -> Check:
    counts = [f"{split} {len(data_captions(cfg.data, [split]))} captions"
              for split in dict.fromkeys([t.train_split, t.eval_split])]
    empty = [c for c in counts if c.split()[1] == "0"]
    if empty:
        raise FormatError(f"{cfg.data.captions}: no captions in split {empty[0].split()[0]!r} "
                          f"(finetune.{task}.train_split / eval_split)", "no captions")
    return Check("ok", f"task {task}", f"{cfg.data.captions}: {', '.join(counts)}")


# the package's tasks by their class (easy-VQA is a VQA); a task registered from outside has no file check
CHECKS = ((VQA, _vqa), (VisualEntailment, _ve), (Grounding, _grounding), (Retrieval, _retrieval))


def check_task(cfg: Config, task: str, strict: bool) -> Check:
    """The task's files; with ``strict`` a problem raises, otherwise it is a warning."""
    t = cfg.finetune[task]
    check = next((check for kind, check in CHECKS if isinstance(task_named(task), kind)), None)
    if check is None:
        return Check("ok", f"task {task}", "a task registered from outside the package: its files are not checked")
    # the task's input limits replace the data section's, as when it trains
    limits = {k: getattr(t, k) for k in ("max_tags", "max_regions") if getattr(t, k)}
    cfg = replace(cfg, data=replace(cfg.data, corpora=[], **limits))
    try:
        return check(cfg, task, t)
    except (MvptrError, OSError) as err:
        if strict:
            raise
        return Check("warn", f"task {task}", f"{err} (not read by pre-training; --task {task} makes it an error)")
