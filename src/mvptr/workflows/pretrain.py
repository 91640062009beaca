"""Pre-training: one stage (the recipe of its objectives, the pair dataset with its masking,
the trainer; the data each corpus gave goes to ``data.json`` beside the run), and the stages
of a run in order on one model (``pretrain_stages``), for the two-stream model and the
merged-attention one alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..checkpoint.bert_init import init_dir, new_bundle
from ..checkpoint.model_card import note_run
from ..checkpoint.model_dir import Bundle, checkpoint_bytes, record_training
from ..core import distributed
from ..core.config import Config, StageConfig, to_dict
from ..core.errors import ConfigError, SkippedSamples
from ..core.fileio import write_json
from ..core.runtime import torch_settings
from ..data.builders import collator, training_tag_vocab
from ..data.pretrain import build_pair_dataset
from ..text.phrases import PhraseVocab
from ..text.tokenizer import WordPieces
from ..train.loggers import check_loggers
from ..train.objectives import active_objectives, stage_masking
from ..train.recipes import pretraining_recipe
from ..train.trainer import TrainResult, check_writable, claim_run_dir, train


def stage_recipe(cfg: Config, stage: StageConfig, merged: bool):
    """The recipe of a pre-training stage, with the stage's own settings."""
    return pretraining_recipe(stage.name, list(stage.objectives), cfg.objectives, merged, stage.cross_modal_lr_scale,
                              negative_warmup_steps=stage.negative_warmup_steps, loss_weights=stage.loss_weights)


def pretrain_stage(cfg: Config, stage: StageConfig, bundle: Bundle, out_dir: str | Path, resume: bool = False, *,
                   progress: bool = True, skipped: SkippedSamples | None = None,
                   overwrite: bool = False) -> TrainResult:
    """Train one stage. With ``cfg.data.skip_bad``, bad samples go to ``skipped`` (a new
    record unless given) and ``out_dir/skipped.json``; ``out_dir/data.json`` holds the
    samples of each corpus. A run already in ``out_dir`` is an error unless ``resume`` or
    ``overwrite`` (``train.trainer.claim_run_dir``). Torch's thread count and deterministic flag
    are the run's while it trains, the caller's again when it returns."""
    with torch_settings(cfg):
        return _pretrain_stage(cfg, stage, bundle, Path(out_dir), resume=resume, progress=progress, skipped=skipped,
                               overwrite=overwrite)


def _pretrain_stage(cfg, stage, bundle, out_dir, *, resume, progress, skipped, overwrite) -> TrainResult:
    check_loggers(stage.loggers, f"{stage.name}.loggers")  # a tracker that is not installed fails now
    main = distributed.active().main  # every process reads the same data; one writes
    if main:
        claim_run_dir(out_dir, resume, overwrite)
        check_writable(Path(out_dir), checkpoint_bytes(bundle.model))  # before reading any data
    recipe = stage_recipe(cfg, stage, bundle.model.merged)
    if cfg.data.skip_bad and skipped is None:
        skipped = SkippedSamples()
    dataset = build_pair_dataset(
        cfg.data, WordPieces(bundle.tokenizer, cfg.data.max_tokens), bundle.phrase_vocab,
        cfg.model.region_feat_dim, cfg.data.train_split, skip=skipped if cfg.data.skip_bad else None,
    )
    out_dir = Path(out_dir)
    counts = ", ".join(f"{name} {c['captions']} captions / {c['images']} images"
                       for name, c in dataset.corpus_counts.items())
    if main:
        print(f"{stage.name}: {len(dataset)} samples ({counts})", flush=True)
    data = {"split": cfg.data.train_split, "samples": len(dataset), "corpora": dataset.corpus_counts,
            "skipped": skipped.summary()["skipped_samples"] if skipped else 0}
    if main:
        write_json(out_dir / "data.json", data)
        if skipped is not None:
            skipped.save(out_dir / "skipped.json")
    masking = stage_masking(cfg.objectives, list(stage.objectives))
    # config.json records its input limits and the objectives that trained its heads (those switched on)
    active = {o.name for o in active_objectives(list(stage.objectives), cfg.objectives)}
    trained = [name for name in stage.objectives if name in active]  # in the stage's order
    record_training(bundle, cfg.data, trained)
    note_run(bundle.card, f"pre-training {stage.name}", data, trained, to_dict(cfg), on_demo_world(cfg))
    return train(bundle, recipe, dataset, collator(cfg, bundle, masking), stage, out_dir, seed=cfg.seed,
                 resume=resume, device=cfg.device, num_workers=cfg.data.num_workers, progress=progress)


def on_demo_world(cfg: Config) -> bool:
    """Whether the run's data are the demo world's (read from under ``demo.data_dir``)."""
    return bool(cfg.demo.data_dir) and str(Path(cfg.demo.data_dir)) in json.dumps(to_dict(cfg.data))


STAGES = ("stage1", "stage2")
# called after each stage with its name, its result and its skipped samples (None without data.skip_bad)
StageDone = Callable[[str, TrainResult, "SkippedSamples | None"], None]


def initial_bundle(cfg: Config) -> Bundle:
    """The model to pre-train: ``init.source`` (checked first), the run's phrase and tag vocabularies."""
    init_dir(cfg)  # a wrong init.source is said before any data is read
    return new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))


def check_stages(cfg: Config, stages: tuple[str, ...], merged: bool) -> None:
    """Every stage's objectives can run (``merged``: on the merged-attention model), so that a
    stage that cannot fails before the first one trains."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown pre-training stages {unknown} (known: {', '.join(STAGES)})")
    for name in stages:
        stage_recipe(cfg, getattr(cfg, name), merged)


def pretrain_stages(cfg: Config, bundle: Bundle, out_dir: str | Path, stages: tuple[str, ...] = STAGES, *,
                    resume: bool = False, progress: bool = True, after: StageDone | None = None,
                    overwrite: bool = False) -> dict[str, TrainResult]:
    """Pre-train ``bundle`` (in place) through ``stages`` in order, each with its settings
    (``cfg.stage1``, ``cfg.stage2``) in ``out_dir/<stage>``; stage 2 continues what stage 1
    trained. The same two stages for the merged-attention model: stage 1 runs the stage-1
    objectives it has (MCR^v, MCR^s), stage 2 the rest. With ``cfg.data.skip_bad`` each stage
    gets its own record of skipped samples."""
    check_stages(cfg, stages, bundle.model.merged)
    results = {}
    for name in stages:
        skipped = SkippedSamples() if cfg.data.skip_bad else None
        results[name] = pretrain_stage(cfg, getattr(cfg, name), bundle, Path(out_dir) / name, resume,
                                       progress=progress, skipped=skipped, overwrite=overwrite)
        if after is not None:
            after(name, results[name], skipped)
    return results
