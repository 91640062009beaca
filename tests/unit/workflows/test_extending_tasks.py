"""A task added from outside the package: one class in this file, registered through the public
API, is fine-tuned and evaluated by the command line like the package's own tasks; a task
name that is not registered is an error that lists the registered ones."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import save_model_dir
from mvptr.cli import main
from mvptr.core.config import TaskConfig, task_config
from mvptr.core.errors import ConfigError
from mvptr.data.builders import training_tag_vocab
from mvptr.data.pretrain import build_pair_dataset
from mvptr.model.heads import PairClassifier
from mvptr.model.task_models import TaskModel
from mvptr.tasks import TASKS, Task, TaskRun, load_config, register_task, task_named
from mvptr.tasks.base import COMMON_FIELDS, classification_accuracy, predict, task_collator, word_pieces
from mvptr.text.phrases import PhraseVocab

LABELS = ("odd", "even")


def parity(caption: str) -> int:
    """1 when the caption has an even number of words."""
    return int(len(caption.split()) % 2 == 0)


class MVPTRForParity(TaskModel):
    """MVPTR with a two-way classifier on the multimodal summary."""

    def add_head(self) -> None:
        self.task_head = PairClassifier(self.cfg, len(LABELS)).to(self.tag_pieces.device)

    def task_args(self) -> dict:
        return {}


class CaptionPairs(Dataset):
    """The tiny world's (caption, image) pairs, each labelled with its caption's parity."""

    def __init__(self, run: TaskRun, split: str, limit: int):
        cfg = run.cfg
        self.pairs = build_pair_dataset(cfg.data, word_pieces(run), run.bundle.phrase_vocab,
                                        cfg.model.region_feat_dim, split, limit, skip=run.skip)
        self.labels = [parity(r.caption) for r in self.pairs.records]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {**self.pairs[i], "label": self.labels[i]}


class CaptionParity(Task):
    """Is the caption's word count even? A binary classification of (image, caption) pairs."""

    name = "parity"
    reads = COMMON_FIELDS
    needs_head = True

    def defaults(self) -> TaskConfig:
        return task_config(self.name, 1, 1e-3, 8, eval_split="val")

    def train_data(self, run: TaskRun):
        self.attach_head(run.bundle, {})
        dataset = CaptionPairs(run, run.t.train_split, run.t.max_train)
        return dataset, task_collator(run), {"labels": list(LABELS)}

    def attach_head(self, bundle, info: dict, init: bool = True) -> None:
        bundle.model = MVPTRForParity.from_base(bundle.model)

    def loss(self, model, batch, generator):
        _, fused = model.fuse_batch(batch)
        return {"parity": F.cross_entropy(model.task_logits(fused).float(), batch["labels"])}

    def evaluate(self, run: TaskRun) -> dict:
        dataset = CaptionPairs(run, run.t.eval_split, run.t.max_eval)
        pred = predict(run, dataset, task_collator(run), len(LABELS)).argmax(1)
        gold = torch.tensor(dataset.labels)
        return {**classification_accuracy(pred, gold, LABELS), "pairs": len(gold),
                "even_share": round(100.0 * gold.float().mean().item(), 2)}


@pytest.fixture
def registered():
    task = register_task(CaptionParity())
    yield task
    TASKS.pop(task.name)  # the table as the other tests know it


@pytest.fixture(scope="module")
def tiny_model(world_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity_model")
    cfg = load_config("tiny", world_args(out))
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    return save_model_dir(out / "model", bundle)


@pytest.mark.slow
def test_a_task_registered_from_outside_fine_tunes_and_evaluates_from_the_command_line(
        registered, tiny_model, world_args, tmp_path):
    out = tmp_path / "parity"
    args = [*world_args(tmp_path), "finetune.parity.train.max_steps=3", "finetune.parity.train.log_every=1"]
    assert main(["finetune", "parity", "--model", str(tiny_model), "--out", str(out), "--config", "tiny",
                 *args]) == 0
    first = json.loads((out / "eval_parity.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and "parity" in json.dumps(records[-1])
    task_file = json.loads((out / "model" / "task.json").read_text())
    assert task_file["task"] == "parity" and task_file["labels"] == list(LABELS)
    assert (out / "model" / "task_head.safetensors").exists()
    # the metric: the accuracy is the per-label recalls weighted by how many pairs have each label
    even = first["even_share"] / 100
    weights = {"odd": 1 - even, "even": even}
    assert 0 < even < 1 and set(first["per_label"]) == set(LABELS)
    assert first["acc"] == pytest.approx(sum(weights[k] * v for k, v in first["per_label"].items()), abs=0.02)
    assert first["pairs"] > 0
    # the saved directory is the task's model again, with its head: the same numbers
    assert main(["evaluate", "parity", "--model", str(out / "model"), "--config", "tiny", *args]) == 0
    assert json.loads((out / "eval_parity.json").read_text()) == first


def test_the_registered_task_is_a_choice_and_has_a_settings_section(registered):
    assert task_named("parity") is registered and list(TASKS)[-1] == "parity"
    cfg = load_config("tiny", ["finetune.parity.max_eval=5"])
    assert cfg.finetune["parity"].max_eval == 5 and cfg.finetune["parity"].eval_split == "val"
    with pytest.raises(ConfigError, match="finetune.parity.questions: the parity task does not read it"):
        load_config("tiny", ["finetune.parity.questions=q.json"])
    with pytest.raises(ValueError, match="registered already"):
        register_task(CaptionParity())


def test_an_unknown_task_is_an_error_listing_the_registered_ones(registered, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown task 'colour'.*retrieval, vqa, ve, grounding, easyvqa, parity"):
        task_named("colour")
    with pytest.raises(ConfigError, match="finetune.colour: no task of that name.*easyvqa, parity"):
        load_config("tiny", ["finetune.colour.max_eval=3"])
    assert main(["evaluate", "colour", "--model", str(tmp_path / "m"), "--config", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown task 'colour'" in err and "parity" in err
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "colour", "--model", str(tmp_path / "m"), "--config", "tiny"])
    assert exit_.value.code == 2 and "'parity'" in capsys.readouterr().err
