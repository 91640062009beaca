"""The standard data sets a run reads, as data: their files, download pages, and sizes and
checksums where a published source gives them ("unknown" elsewhere: none is guessed); and the
layout each preset expects (every path setting it resolves to, and what reads it).

Sizes and SHA-256 sums of the COCO archives are those TensorFlow Datasets records for the
same URLs (``tensorflow_datasets/url_checksums/coco.txt``)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ..core.config import CONFIG_DIR, load_config, to_dict

UNKNOWN = "unknown"
TFDS = "tensorflow/datasets url_checksums/coco.txt"


@dataclass(frozen=True)
class DataFile:
    """One file (or archive) of a data set; ``size`` in bytes and ``sha256`` only where ``source`` gives them."""

    name: str
    size: int | None = None
    sha256: str = UNKNOWN
    source: str = ""  # where the size and checksum come from

    def size_text(self) -> str:
        return UNKNOWN if self.size is None else f"{self.size} B ({self.size / 2**30:.2f} GiB)"


@dataclass(frozen=True)
class DataSet:
    name: str
    what: str
    page: str
    files: tuple[DataFile, ...]
    keys: tuple[str, ...]  # the settings that point at it
    read_by: str  # the commands that read it
    notes: str = ""


def _unsized(*names: str) -> tuple[DataFile, ...]:
    return tuple(DataFile(n) for n in names)


DATASETS = (
    DataSet("coco-karpathy", "COCO captions in Karpathy's splits (5 per image; train, restval, val, test)",
            "https://cs.stanford.edu/people/karpathy/deepimagesent/",
            _unsized("caption_datasets.zip", "dataset_coco.json"), ("data.captions", "data.corpora[].captions"),
            "prepare phrases, prepare vocab, pretrain, evaluate, finetune retrieval",
            "data.train_split=train+restval trains on both"),
    DataSet("coco-karpathy-lists", "the same splits as ALBEF / LAVIS caption lists, one file per split",
            "https://storage.googleapis.com/sfr-vision-language-research/datasets/",
            _unsized("coco_karpathy_train.json", "coco_karpathy_val.json", "coco_karpathy_test.json"),
            ("data.captions", "data.corpora[].captions"), "prepare phrases, prepare vocab, pretrain, evaluate, "
            "finetune retrieval",
            "data.captions=<dir>/coco_karpathy_{split}.json (the lists carry no split)"),
    DataSet("flickr30k-karpathy", "Flickr30k captions in Karpathy's splits (29,000 / 1,014 / 1,000 images)",
            "https://cs.stanford.edu/people/karpathy/deepimagesent/",
            _unsized("caption_datasets.zip", "dataset_flickr30k.json"), ("data.captions", "data.corpora[].captions"),
            "prepare phrases, prepare vocab, pretrain, evaluate, finetune retrieval"),
    DataSet("coco-images", "COCO 2014 images, for `features extract`",
            "https://cocodataset.org/#download",
            (DataFile("train2014.zip", 13510573713,
                      "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775", TFDS),
             DataFile("val2014.zip", 6645013297,
                      "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0", TFDS)),
            (), "features extract --images"),
    DataSet("coco-instances", "COCO 2014 object annotations: ground-truth tags (paper 3.1.2)",
            "https://cocodataset.org/#download",
            (DataFile("annotations_trainval2014.zip", 252872794,
                      "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009", TFDS),
             DataFile("instances_train2014.json"), DataFile("instances_val2014.json")),
            ("data.tags", "data.corpora[].tags"), "prepare tags --instances (writes the file data.tags reads)"),
    DataSet("vinvl-features", "VinVL detector region features and predictions, with their .lineidx",
            "https://github.com/pzzhang/VinVL/blob/main/DOWNLOAD.md",
            _unsized("features.tsv", "features.lineidx", "predictions.tsv", "predictions.lineidx"),
            ("data.features", "data.predictions", "data.corpora[].features", "data.corpora[].predictions",
             "finetune.<task>.features", "finetune.<task>.predictions"),
            "features convert, pretrain, evaluate, finetune",
            "`mvptr features convert` turns the pair into a memmap store directory, which data.features can name"),
    DataSet("flickr30k-entities", "phrase boxes of Flickr30k captions, for phrase grounding",
            "https://github.com/BryanPlummer/flickr30k_entities",
            _unsized("annotations.zip", "Annotations/<image>.xml", "Sentences/<image>.txt"), ("eval.entities_dir",),
            "evaluate (grounding), finetune grounding, evaluate grounding"),
    DataSet("vqa-v2", "VQA v2 questions and annotations (paper A.3.2: train2014+val2014, test-dev2015)",
            "https://visualqa.org/download.html",
            _unsized("v2_Questions_Train_mscoco.zip", "v2_Annotations_Train_mscoco.zip", "v2_Questions_Val_mscoco.zip",
                     "v2_Annotations_Val_mscoco.zip", "v2_Questions_Test_mscoco.zip",
                     "v2_OpenEnded_mscoco_{split}_questions.json", "v2_mscoco_{split}_annotations.json"),
            ("finetune.vqa.questions", "finetune.vqa.annotations"), "finetune vqa, evaluate vqa",
            "test-dev has no annotations: evaluation writes the server's results file"),
    DataSet("snli-ve", "SNLI-VE visual entailment pairs on Flickr30k images",
            "https://github.com/necla-ml/SNLI-VE",
            _unsized("snli_ve_train.jsonl", "snli_ve_dev.jsonl", "snli_ve_test.jsonl"), ("finetune.ve.hypotheses",),
            "finetune ve, evaluate ve", "finetune.ve.hypotheses=<dir>/snli_ve_{split}.jsonl"),
)

# which setting reads which data set (the demo world's files are made by `mvptr prepare demo`)
FILE_KEYS = {
    "data.root": "the folder the preset's data paths lie under (${data.root}/...): one override moves them all",
    "data.captions": "prepare phrases, prepare vocab, pretrain, evaluate, finetune retrieval|grounding",
    "data.features": "pretrain, evaluate, finetune", "data.predictions": "pretrain, evaluate, finetune",
    "data.phrase_cache": "pretrain, evaluate, finetune retrieval|grounding (written by prepare phrases)",
    "data.phrase_vocab": "pretrain (written by prepare phrases / prepare vocab)",
    "data.tags": "pretrain, evaluate, finetune (written by prepare tags)",
    "data.image_id_map": "pretrain, evaluate, finetune", "eval.entities_dir": "evaluate, finetune grounding",
    "demo.data_dir": "prepare demo, demo, ablate (the demo world, written there)",
}
TASK_FILE_FIELDS = ("questions", "annotations", "hypotheses", "features", "predictions")
CORPUS_FIELDS = ("captions", "features", "predictions", "phrase_cache", "tags")


@dataclass
class LayoutRow:
    preset: str
    key: str
    path: str
    read_by: str
    data_set: str = ""


def data_set_of(key: str) -> str:
    """The data sets a setting points at (by the catalogue's ``keys``), or "made by mvptr"."""
    generic = re.sub(r"\[\d+\]", "[]", key)
    generic = re.sub(r"^finetune\.\w+\.(features|predictions)$", r"finetune.<task>.\1", generic)
    return ", ".join(d.name for d in DATASETS if generic in d.keys) or "made by mvptr"


def _preset_rows(preset: str, cfg: dict) -> list[LayoutRow]:
    rows = [LayoutRow(preset, k, str(_get(cfg, k)), read_by) for k, read_by in FILE_KEYS.items() if _get(cfg, k)]
    for n, corpus in enumerate(cfg["data"]["corpora"]):
        rows += [LayoutRow(preset, f"data.corpora[{n}].{f}", str(corpus[f]), "pretrain, prepare vocab")
                 for f in CORPUS_FIELDS if corpus.get(f)]
    for task, settings in cfg["finetune"].items():
        rows += [LayoutRow(preset, f"finetune.{task}.{f}", str(settings[f]), f"finetune {task}, evaluate {task}")
                 for f in TASK_FILE_FIELDS if settings.get(f)]
    if cfg["init"]["source"] not in ("minilm", "random"):
        rows.append(LayoutRow(preset, "init.source", cfg["init"]["source"], "pretrain (a BERT directory)"))
    world = cfg["demo"]["data_dir"].rstrip("/") + "/"
    for row in rows:
        row.data_set = data_set_of(row.key)
        if row.path.startswith(world):  # the demo world's files: made by `mvptr prepare`, in that format
            made = "easy-VQA, made by `mvptr prepare easyvqa`" if "/easyvqa/" in row.path else "the demo world"
            row.data_set = made + ("" if row.data_set == "made by mvptr" else f" ({row.data_set} format)")
    return rows


def _get(cfg: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def layout(names: list[str] | None = None) -> list[LayoutRow]:
    """Every file path each preset (all of them by default) resolves to, with what reads it."""
    return [row for name in (names or presets()) for row in _preset_rows(name, to_dict(load_config(name)))]


def catalogue(names: list[str] | None = None) -> dict:
    """The data sets and the presets' layout, as plain data (``mvptr data list --json``)."""
    return {"datasets": [asdict(d) for d in DATASETS], "layout": [asdict(r) for r in layout(names)]}


def aligned(rows: list[list[str]]) -> str:
    """Rows of cells as columns padded to their widest cell (the last column unpadded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows).rstrip()


def tables(names: list[str] | None = None) -> str:
    """The catalogue as two aligned tables: the data sets' files, then each preset's layout."""
    files = [["DATA SET", "FILE", "SIZE", "SHA-256", "PAGE"]]
    for d in DATASETS:
        files += [[d.name, f.name, f.size_text(), f.sha256, d.page] for f in d.files]
    places = [["PRESET", "SETTING", "PATH (from the directory a command runs in)", "DATA SET", "READ BY"]]
    places += [[r.preset, r.key, r.path, r.data_set, r.read_by] for r in layout(names)]
    sourced = sorted({f.source for d in DATASETS for f in d.files if f.source})
    return (aligned(files) + f"\n(sizes and checksums: {', '.join(sourced)}; \"unknown\" where no source gives them)"
            + "\n\n" + aligned(places))


__all__ = ["DATASETS", "DataFile", "DataSet", "LayoutRow", "aligned", "catalogue", "layout", "presets", "tables"]
