"""Fine-tuning and evaluation on the downstream tasks (paper 4.2, appendix A.3).

Each task is a recipe of the one trainer:

* ``retrieval``: VSC + ITM on the caption pairs (the pre-training objectives, nothing masked);
  evaluated by coarse-to-fine ranking (``eval/retrieval.py``), with the per-pair scores saved.
  The merged-attention model has no global embeddings: ITM alone, with uniformly drawn
  negatives, and every pair of the evaluation images scored by ITM;
* ``vqa`` (and ``easyvqa``, the same task on other files): an answer classifier on the
  multimodal summary, initialised from the MLM head, trained with BCE on soft scores;
  evaluated with the official VQA accuracy, and a results file for the evaluation server;
* ``ve``: a 3-way classifier on the multimodal summary (SNLI-VE), cross entropy, accuracy;
* ``grounding``: the cosine of each mention (mean of its word pieces' multimodal outputs)
  to each region output, regressed on the regions' IoU with the mention's box (MSE);
  evaluated as accuracy at IoU > 0.5.

A fine-tuned model directory is an ordinary model directory (the encoders) plus, for
tasks with a head, ``task_head.safetensors`` and ``task.json`` (the task and its answers).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..checkpoint.model_card import note_evaluation, note_run
from ..checkpoint.model_dir import Bundle, rebuild_model, record_training, write_model_card
from ..checkpoint.task_dir import attach_head, save_task_model
from ..core import distributed
from ..core.config import Config, TaskConfig, task_kind, to_dict
from ..core.errors import ConfigError, FormatError, SkippedSamples
from ..core.runtime import torch_settings
from ..data.answers import answer_vocabulary
from ..data.builders import collator, image_source, phrase_lookup
from ..data.grounding import grounding_examples
from ..data.pretrain import ImageSource, build_pair_dataset, data_captions, open_images
from ..data.tasks import GroundingDataset, TaskCollator, TaskImages, VEDataset, VQADataset
from ..eval.grounding import evaluate_grounding
from ..eval.retrieval import rank_dataset
from ..eval.vqa import evaluate_vqa
from ..formats.snli_ve import VE_LABELS, read_snli_ve
from ..formats.vqa import read_vqa, write_vqa_results
from ..text.tokenizer import WordPieces
from ..train.loggers import check_loggers, log_figures
from ..train.recipes import task_recipe
from ..train.trainer import TrainResult, claim_run_dir, train
from .pretrain import on_demo_world

LIMITS = ("max_tokens", "max_tags", "max_regions", "max_phrases")  # a task's own data.max_* (0: data's)
COMMON_FIELDS = ("train", "train_split", "eval_split", "max_train", "max_eval", "dropout",
                 "max_tokens", "max_tags", "max_regions")
TASK_FIELDS = {  # the TaskConfig fields each kind of task reads (VQA and SNLI-VE texts have no phrases)
    "retrieval": (*COMMON_FIELDS, "max_phrases"),
    "vqa": (*COMMON_FIELDS, "questions", "annotations", "features", "predictions", "num_answers", "mask_regions"),
    "ve": (*COMMON_FIELDS, "hypotheses", "features", "predictions", "mask_regions"),
    "grounding": (*COMMON_FIELDS, "max_phrases"),
}


def check_task_config(task: str, t: TaskConfig) -> None:
    """A field the task does not read must keep its default: setting it is an error, not a no-op."""
    kind, default = task_kind(task), TaskConfig()
    for f in fields(TaskConfig):
        if f.name not in TASK_FIELDS[kind] and getattr(t, f.name) != getattr(default, f.name):
            raise ConfigError(f"finetune.{task}.{f.name}: the {kind} task does not read it; leave it unset")
    if kind != "retrieval" and t.train.objectives:
        raise ConfigError(f"finetune.{task}.train.objectives: the {kind} task trains its own head; leave it empty")


def task_setup(cfg: Config, task: str, bundle: Bundle | None = None) -> tuple[Config, TaskConfig]:
    """The run's configuration for ``task``: its input limits in place of ``data.max_*``, and,
    given the model to fine-tune, its dropout (the model is rebuilt with it)."""
    t = getattr(cfg.finetune, task)
    check_task_config(task, t)
    cfg = replace(cfg, data=replace(cfg.data, **{k: getattr(t, k) for k in LIMITS if getattr(t, k)}))
    if bundle is not None and t.dropout >= 0 and t.dropout != bundle.model.cfg.dropout:
        rebuild_model(bundle, replace(bundle.model.cfg, dropout=t.dropout))
        cfg = replace(cfg, model=bundle.model.cfg)
    return cfg, t





def _task_images(cfg: Config, t: TaskConfig) -> TaskImages:
    """The task's images: its own feature files, or the pre-training images with their tags."""
    if not t.features and not t.predictions:
        return TaskImages(open_images(replace(cfg.data, corpora=[]), cfg.model.region_feat_dim))
    d = cfg.data
    return TaskImages(ImageSource(t.features or d.features, t.predictions or d.predictions, cfg.model.region_feat_dim,
                                  d.max_regions, d.max_tags, dedupe_tags=d.dedupe_tags))


def vqa_questions(t: TaskConfig, split: str, training: bool = False) -> list:
    """The questions of ``split`` ("train2014+val2014" joins several) with their annotations.

    Training needs the answers: an annotations file that is not set or not there is an error.
    An evaluation split without one (test-dev) gives questions without answers (a results file
    for the evaluation server, no accuracy), and says so on stderr."""
    out = []
    for part in split.split("+"):
        questions = t.questions.format(split=part)
        ann = t.annotations.format(split=part) if t.annotations else None
        if ann is None or not Path(ann).exists():
            what = f"annotations file {ann}: file not found" if ann else "no annotations file (annotations unset)"
            if training:
                raise FormatError(f"{what}; training needs the answers of {questions} (finetune.<task>.annotations)",
                                  "file not found")
            if distributed.active().main:
                print(f"mvptr: {questions}: {what}; writing its results file without accuracy", file=sys.stderr)
            ann = None
        out += read_vqa(questions, ann)
    return out


def _pieces(cfg: Config, bundle: Bundle) -> WordPieces:
    return WordPieces(bundle.tokenizer, cfg.data.max_tokens)


def _collate(cfg: Config, bundle: Bundle, num_answers: int = 0, mask_regions: bool = False) -> TaskCollator:
    return TaskCollator(collator(cfg, bundle), num_answers, mask_regions)


def grounding_dataset(cfg: Config, bundle: Bundle, split: str, limit: int,
                      skip: SkippedSamples | None = None) -> GroundingDataset:
    image_ids = sorted({r.image_id for r in data_captions(cfg.data, [split], skip)})
    examples = grounding_examples(cfg.eval.entities_dir, image_ids, bundle.tokenizer, cfg.data.max_tokens,
                                  phrase_lookup(cfg, bundle.phrase_vocab, split), skip)
    if not examples:
        raise FormatError(f"{cfg.eval.entities_dir}: no Flickr30k Entities sentences for the {split!r} images "
                          "(expected Sentences/<image>.txt and Annotations/<image>.xml; eval.entities_dir)",
                          "file not found")
    return GroundingDataset(examples, image_source(cfg), limit)



@dataclass
class FinetuneResult:
    train: TrainResult
    model_dir: Path
    examples: int
    skipped: SkippedSamples | None = None  # bad samples left out (data.skip_bad)


def finetune(cfg: Config, task: str, bundle: Bundle, out_dir: str | Path, progress: bool = True, *,
             overwrite: bool = False, skipped: SkippedSamples | None = None) -> FinetuneResult:
    """Fine-tune ``bundle`` (in place) on ``task``; the model goes to ``out_dir/model``. A run
    already in ``out_dir`` is an error unless ``overwrite`` replaces it. With ``cfg.data.skip_bad``
    bad samples go to ``skipped`` (a new one when not given) instead of raising. Torch's thread
    count and deterministic flag are the run's while it trains, the caller's again afterwards."""
    with torch_settings(cfg):
        return _finetune(cfg, task, bundle, Path(out_dir), progress, overwrite, skipped)


def _finetune(cfg, task, bundle, out_dir, progress, overwrite, skipped) -> FinetuneResult:
    skip = (skipped if skipped is not None else SkippedSamples()) if cfg.data.skip_bad else None
    kind = task_kind(task)
    cfg, t = task_setup(cfg, task, bundle)
    check_loggers(t.train.loggers, f"finetune.{task}.train.loggers")
    out_dir = Path(out_dir)
    if distributed.active().main:
        claim_run_dir(out_dir, resume=False, overwrite=overwrite)
    info: dict = {"task": task, "train_split": t.train_split, "mask_regions": t.mask_regions}
    if kind == "retrieval":
        dataset = build_pair_dataset(cfg.data, _pieces(cfg, bundle), bundle.phrase_vocab, cfg.model.region_feat_dim,
                                     t.train_split, t.max_train, skip)
        collate = collator(cfg, bundle)
    elif kind == "vqa":
        questions = vqa_questions(t, t.train_split, training=True)
        answers = answer_vocabulary((q.answers for q in questions), t.num_answers)
        info["answers"] = answers
        attach_head(bundle, task, answers)
        dataset = VQADataset(questions, _task_images(cfg, t), _pieces(cfg, bundle), answers, t.max_train, skip)
        collate = _collate(cfg, bundle, len(answers), t.mask_regions)
    elif kind == "ve":
        attach_head(bundle, task)
        pairs = read_snli_ve(t.hypotheses.format(split=t.train_split), skip)
        info["unlabelled_pairs_left_out"] = pairs.unlabelled  # gold label "-"
        dataset = VEDataset(pairs, _task_images(cfg, t), _pieces(cfg, bundle), t.max_train, skip)
        collate = _collate(cfg, bundle, mask_regions=t.mask_regions)
    else:
        dataset = grounding_dataset(cfg, bundle, t.train_split, t.max_train, skip)
        collate = _collate(cfg, bundle, mask_regions=t.mask_regions)
    recipe = task_recipe(task, cfg, bundle.model.merged)
    record_training(bundle, cfg.data, t.train.objectives)
    data = {"split": t.train_split, "samples": len(dataset), "corpora": getattr(dataset, "corpus_counts", {})}
    note_run(bundle.card, f"fine-tuning {task}", data, t.train.objectives, to_dict(cfg), on_demo_world(cfg))
    result = train(bundle, recipe, dataset, collate, t.train, out_dir, cfg.seed, False, cfg.device,
                   cfg.data.num_workers, progress)
    model_dir = out_dir / "model"
    if distributed.active().main:
        save_task_model(model_dir, bundle, info)
    distributed.barrier()
    return FinetuneResult(result, model_dir, len(dataset), skip)


def log_evaluation(cfg: Config, task: str, out_dir: str | Path, figures: dict, result: FinetuneResult,
                   bundle: Bundle) -> None:
    """``evaluate_task``'s figures of the model ``result`` fine-tuned: to the trackers of the task's
    ``train.loggers`` (under ``eval/``, at its last step; metrics.jsonl keeps the training records
    only) and to the model directory's card."""
    _, t = task_setup(cfg, task)
    note_evaluation(bundle.card, task, figures)
    if distributed.active().main:
        log_figures(t.train.loggers, out_dir, f"{Path(out_dir).name}/{task} evaluation", figures, result.train.steps)
        write_model_card(result.model_dir, bundle)


@torch.no_grad()
def _predict(model, dataset, collate, batch_size: int, device: str, num_outputs: int) -> torch.Tensor:
    """Task-head outputs for every example; under torchrun each process predicts its share."""
    mine = Subset(dataset, range(len(dataset))[distributed.shard(len(dataset))])
    outs = [torch.zeros(0, num_outputs, device=device)]
    for batch in DataLoader(mine, batch_size=batch_size, collate_fn=collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        _, fused = model.fuse_batch(batch)
        outs.append(model.task_logits(fused).float())
    return distributed.gather_rows(torch.cat(outs)).cpu()


@torch.no_grad()
def evaluate_task(cfg: Config, task: str, bundle: Bundle, out_dir: str | Path | None = None,
                  progress: bool = True, mask_regions: bool | None = None,
                  group_of: Callable[[str], str] | None = None, skipped: SkippedSamples | None = None) -> dict:
    """Evaluate ``bundle`` on ``task``'s evaluation split; files (VQA results, retrieval pair
    scores) go to ``out_dir`` when given. ``mask_regions`` defaults to the task config's.
    ``group_of`` (SNLI-VE): a hypothesis's group; the accuracies of each group are added under
    ``per_group``. With ``cfg.data.skip_bad`` bad samples go to ``skipped`` instead of raising."""
    skip = (skipped if skipped is not None else SkippedSamples()) if cfg.data.skip_bad else None
    kind = task_kind(task)
    cfg, t = task_setup(cfg, task)
    model = bundle.model.eval()
    split, bs = t.eval_split, cfg.eval.batch_size
    hide = t.mask_regions if mask_regions is None else mask_regions
    out_dir = Path(out_dir) if out_dir is not None else None
    if kind in ("vqa", "ve") and not hasattr(model, "task_head"):
        raise ConfigError(f"{task}: the model has no task head; fine-tune it first (`mvptr finetune {task}`)")
    if kind == "vqa":
        answers = model.task_head.answers
        questions = vqa_questions(t, split)
        dataset = VQADataset(questions, _task_images(cfg, t), _pieces(cfg, bundle), answers, t.max_eval, skip)
        collate = _collate(cfg, bundle, len(answers), hide)
        best = _predict(model, dataset, collate, bs, cfg.device, len(answers)).argmax(1).tolist()
        predictions = {q.question_id: answers[a] for q, a in zip(dataset.questions, best)}
        if out_dir is not None and distributed.active().main:
            write_vqa_results(out_dir / f"vqa_results_{split}.json", predictions)
        if not dataset.questions or not dataset.questions[0].answers:
            return {"questions": len(predictions), "results_only": True}
        metrics = evaluate_vqa(predictions, dataset.questions)
        majority = evaluate_vqa({q.question_id: answers[0] for q in dataset.questions}, dataset.questions)
        return {"acc": metrics.pop("overall"), "majority": majority["overall"], **metrics}
    if kind == "ve":
        pairs = read_snli_ve(t.hypotheses.format(split=split), skip)
        dataset = VEDataset(pairs, _task_images(cfg, t), _pieces(cfg, bundle), t.max_eval, skip)
        collate = _collate(cfg, bundle, mask_regions=hide)
        pred = _predict(model, dataset, collate, bs, cfg.device, len(VE_LABELS)).argmax(1)
        gold = torch.tensor([VE_LABELS.index(p.label) for p in dataset.pairs])
        out = {**classification_accuracy(pred, gold, VE_LABELS), "pairs": len(gold),
               "unlabelled_pairs_left_out": pairs.unlabelled}
        if group_of is not None:
            groups = np.array([group_of(p.hypothesis) for p in dataset.pairs])
            out["per_group"] = {}
            for g in sorted(set(groups)):
                mine = torch.from_numpy(groups == g)
                out["per_group"][g] = {**classification_accuracy(pred[mine], gold[mine], VE_LABELS),
                                       "pairs": int(mine.sum())}
        return out
    if kind == "grounding":
        data = grounding_dataset(cfg, bundle, split, t.max_eval, skip)
        return evaluate_grounding(model, data.examples, data.images, _collate(cfg, bundle).base, bs, cfg.device)
    return _evaluate_retrieval(cfg, t, bundle, out_dir, progress, skip)


def classification_accuracy(pred: torch.Tensor, gold: torch.Tensor, labels) -> dict:
    """Accuracy (percent) overall and per gold label (recall of each class); no example is an error."""
    if len(gold) == 0:
        raise FormatError("classification: no examples to evaluate")
    per_label = {name: round(100.0 * (pred[gold == k] == k).float().mean().item(), 2)
                 for k, name in enumerate(labels) if (gold == k).any()}
    return {"acc": round(100.0 * (pred == gold).float().mean().item(), 2), "per_label": per_label}


def _evaluate_retrieval(cfg: Config, t: TaskConfig, bundle: Bundle, out_dir: Path | None, progress: bool,
                        skip: SkippedSamples | None = None) -> dict:
    """Ranking on ``t.eval_split`` (its first ``t.max_eval`` images, or all) with ``cfg.eval``'s
    k_c, k_i and final score."""
    dataset = build_pair_dataset(cfg.data, _pieces(cfg, bundle), bundle.phrase_vocab, cfg.model.region_feat_dim,
                                 t.eval_split, t.max_eval, skip)
    result, image_ids = rank_dataset(cfg, bundle.model, dataset, collator(cfg, bundle), progress, keep_pairs=True,
                                     subset=("finetune.retrieval.max_eval", t.max_eval))
    pairs = result.pop("pair_scores", None)
    if out_dir is not None and pairs is not None and distributed.active().main:
        out_dir.mkdir(parents=True, exist_ok=True)
        records = dataset.records
        np.savez_compressed(
            out_dir / "retrieval_pair_scores.npz",
            image_id=np.asarray([image_ids[i] for i in pairs["image"].tolist()]),
            text_index=pairs["text"].numpy(),
            caption=np.asarray([records[i].caption for i in pairs["text"].tolist()]),
            positive=np.asarray([records[t].image_id == image_ids[v]
                                 for v, t in zip(pairs["image"].tolist(), pairs["text"].tolist())]),
            itm=pairs["itm"].numpy(),
            **({"sim": pairs["sim"].numpy()} if "sim" in pairs else {}),  # the merged model has none
        )
    return {**result, "images": len(image_ids), "captions": len(dataset)}
