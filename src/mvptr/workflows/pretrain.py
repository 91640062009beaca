"""Pre-training one stage: the recipe of its objectives, the pair dataset with its
masking, the trainer; the data each corpus gave goes to ``data.json`` beside the run."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint.model_dir import Bundle, checkpoint_bytes
from ..core import distributed
from ..core.config import Config, StageConfig
from ..core.errors import SkippedSamples
from ..core.fileio import write_json
from ..core.runtime import configure_torch
from ..data.builders import collator
from ..data.collate import Masking
from ..data.pretrain import build_pair_dataset
from ..text.tokenizer import WordPieces
from ..train.recipes import pretraining_recipe
from ..train.trainer import TrainResult, check_writable, train


def pretrain_stage(cfg: Config, stage: StageConfig, bundle: Bundle, out_dir: str | Path, resume: bool = False,
                   progress: bool = True, skipped: SkippedSamples | None = None) -> TrainResult:
    """Train one stage. With ``cfg.data.skip_bad``, bad samples go to ``skipped`` (a new
    record unless given) and ``out_dir/skipped.json``; ``out_dir/data.json`` holds the
    samples of each corpus."""
    configure_torch(cfg)
    main = distributed.active().main  # every process reads the same data; one writes
    if main:
        check_writable(Path(out_dir), checkpoint_bytes(bundle.model))  # before reading any data
    recipe = pretraining_recipe(stage.name, list(stage.objectives), cfg.objectives, bundle.model.merged,
                                stage.cross_modal_lr_scale, negative_warmup_steps=stage.negative_warmup_steps,
                                loss_weights=stage.loss_weights)
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
        write_json(out_dir / "data.json", {"split": cfg.data.train_split, "samples": len(dataset),
                                           "corpora": dataset.corpus_counts,
                                           "skipped": skipped.summary()["skipped_samples"] if skipped else 0})
        if skipped is not None:
            skipped.save(out_dir / "skipped.json")
    masking = Masking.for_objectives(cfg.objectives, list(stage.objectives))
    return train(bundle, recipe, dataset, collator(cfg, bundle, masking), stage, out_dir, cfg.seed, resume,
                 cfg.device, cfg.data.num_workers, progress)


