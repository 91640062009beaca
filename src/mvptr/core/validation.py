"""Settings checks: values that would divide by zero, train nothing or select nothing are
refused when the config is built, naming the key (``mvptr.core.config.load_config`` calls
``validate``)."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError
from .objectives import objective_names
from .precision import CHOICES as PRECISION_CHOICES

CHOICES = {
    "model.global_pool": ("cls", "mean"),
    "model.tag_mode": ("concepts", "word_pieces"),
    "model.layout": ("mvptr", "official"),
    "objectives.mcr_matching": ("hungarian", "aligned"),
    "objectives.wpg_variant": ("paper", "official"),
    "objectives.negative_sampling": ("sampled", "hardest", "uniform"),
    "objectives.itm_negatives": ("half_each", "both"),
    "objectives.loss_average": ("token", "sample"),
    "eval.rerank_score": ("itm", "itm+sim"),
    "eval.precision": PRECISION_CHOICES,
}
STAGE_CHOICES = {"precision": PRECISION_CHOICES, "engine": ("torch", "deepspeed"), "zero_stage": (1, 2)}
LOGGER_NAMES = ("jsonl", "tensorboard", "wandb", "mlflow")  # mvptr.train.loggers.LOGGERS


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check(ok: bool, key: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {want}")


def _check_stage(key: str, stage, names: tuple[str, ...], objectives_known: bool, recipe: bool | None = None) -> None:
    """``names``: the objectives there are; ``objectives_known``: a pre-training stage (it lists
    objectives); ``recipe``: it trains with the pre-training recipe, whose negative warm-up and
    loss weights it reads (pre-training and retrieval)."""
    recipe = objectives_known if recipe is None else recipe
    _check(stage.batch_size > 0, f"{key}.batch_size", stage.batch_size, "must be a positive number of samples")
    _check(stage.max_steps >= 0, f"{key}.max_steps", stage.max_steps,
           "must be 0 (train by epochs) or a positive step count")
    _check(stage.epochs > 0 or stage.max_steps > 0, f"{key}.epochs", stage.epochs,
           "must be positive (or set max_steps), else nothing trains")
    _check(stage.lr > 0, f"{key}.lr", stage.lr, "must be a positive learning rate")
    _check(stage.weight_decay >= 0, f"{key}.weight_decay", stage.weight_decay, "must be >= 0")
    _check(0 <= stage.warmup_ratio <= 1, f"{key}.warmup_ratio", stage.warmup_ratio, "must be within [0, 1]")
    _check(stage.grad_clip > 0, f"{key}.grad_clip", stage.grad_clip, "must be a positive gradient norm")
    _check(stage.log_every > 0, f"{key}.log_every", stage.log_every, "must be a positive step count")
    _check(stage.cross_modal_lr_scale > 0, f"{key}.cross_modal_lr_scale", stage.cross_modal_lr_scale,
           "must be positive")
    _check(objectives_known or stage.cross_modal_lr_scale == 1.0, f"{key}.cross_modal_lr_scale",
           stage.cross_modal_lr_scale, "is read by pre-training stages only; leave it at 1 for a task")
    _check(stage.negative_warmup_steps >= 0, f"{key}.negative_warmup_steps", stage.negative_warmup_steps,
           "must be >= 0")
    for name, weight in stage.loss_weights.items():
        _check(name in names, f"{key}.loss_weights.{name}", weight,
               f"not an objective (expected one of {', '.join(names)})")
        _check(weight >= 0 and weight != float("inf"), f"{key}.loss_weights.{name}", weight,
               "must be a finite weight >= 0")
    for name in ("negative_warmup_steps", "loss_weights"):
        _check(recipe or not getattr(stage, name), f"{key}.{name}", getattr(stage, name),
               "is read by pre-training stages and retrieval fine-tuning only; leave it unset for this task")
    _check(stage.save_every >= 0, f"{key}.save_every", stage.save_every, "must be 0 (only at the end) or positive")
    _check(stage.max_skipped_steps >= 0, f"{key}.max_skipped_steps", stage.max_skipped_steps,
           "must be 0 (stop at the first skipped step) or more")
    _check(stage.grad_accum_steps >= 1, f"{key}.grad_accum_steps", stage.grad_accum_steps, "must be at least 1")
    _check(stage.batch_size % stage.grad_accum_steps == 0, f"{key}.grad_accum_steps", stage.grad_accum_steps,
           f"must divide the batch size {stage.batch_size}")
    for name, allowed in STAGE_CHOICES.items():
        value = getattr(stage, name)
        _check(value in allowed, f"{key}.{name}", value, f"expected one of {', '.join(map(str, allowed))}")
    unknown_loggers = [n for n in stage.loggers if n not in LOGGER_NAMES]
    _check(not unknown_loggers, f"{key}.loggers", list(stage.loggers),
           f"unknown loggers {unknown_loggers} (known: {', '.join(LOGGER_NAMES)})")
    if objectives_known:
        unknown = [o for o in stage.objectives if o not in names]
        _check(not unknown, f"{key}.objectives", list(stage.objectives),
               f"unknown objectives {unknown} (known: {', '.join(names)})")


# the demo world's smallest scene: below it the smallest shapes are a few pixels wide
MIN_IMAGE_SIZE = 32


def check_world_size(n_train: int, n_val: int, n_test: int, image_size: int, names: dict[str, str]) -> None:
    """The demo world's split sizes and image side, each named as ``names`` says (a config key
    or a command-line flag)."""
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        _check(value >= 1, names[name], value, "must be at least 1 image (the split is trained or evaluated on)")
    _check(n_val >= 0, names["n_val"], n_val, "must be 0 or more images")
    _check(image_size >= MIN_IMAGE_SIZE, names["image_size"], image_size,
           f"must be at least {MIN_IMAGE_SIZE} pixels (smaller scenes leave the smallest shapes a few pixels wide)")


def _check_finite(node: Any, prefix: str = "") -> None:
    """No setting may be NaN or infinite: a learning rate of inf divides by zero in the scheduler."""
    items = vars(node).items() if hasattr(node, "__dataclass_fields__") else (
        node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ())
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, float):
            _check(math.isfinite(value), name, value, "must be a finite number")
        elif not isinstance(value, (str, bytes)):
            _check_finite(value, f"{name}.")


def validate(cfg) -> None:
    """Refuse values that would divide by zero, train nothing or select nothing, naming the key."""
    _check_finite(cfg)
    m, d, e = cfg.model, cfg.data, cfg.eval
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        _check(value in allowed, key, value, f"expected one of {', '.join(allowed)}")
    _check(cfg.device == "cpu" or cfg.device.split(":")[0] in ("cuda", "mps"), "device", cfg.device,
           "expected cpu, cuda, cuda:N or mps")
    _check(cfg.threads >= 0, "threads", cfg.threads, "must be 0 (torch's default) or a positive thread count")
    for key in ("hidden_size", "num_heads", "intermediate_size", "text_layers", "visual_layers", "multimodal_layers",
                "region_feat_dim", "embed_dim"):
        _check(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "must be positive")
    _check(m.hidden_size % m.num_heads == 0, "model.num_heads", m.num_heads,
           f"must divide model.hidden_size {m.hidden_size}")
    _check(1 <= m.wpg_layer <= m.multimodal_layers, "model.wpg_layer", m.wpg_layer,
           f"must be a multimodal layer, 1..{m.multimodal_layers}")
    for key in ("dropout", "attention_dropout"):
        _check(0 <= getattr(m, key) < 1, f"model.{key}", getattr(m, key), "must be within [0, 1)")
    _check(m.temperature > 0, "model.temperature", m.temperature, "must be positive")
    _check(d.max_tokens >= 3, "data.max_tokens", d.max_tokens, "must leave room for [CLS], a word and [SEP] (>= 3)")
    for key in ("max_phrases", "max_tags", "num_workers"):
        _check(getattr(d, key) >= 0, f"data.{key}", getattr(d, key), "must be >= 0")
    _check(d.phrase_min_count >= 1, "data.phrase_min_count", d.phrase_min_count,
           "must be at least 1 caption (a phrase seen in none cannot be learned)")
    _check(d.max_tokens + d.max_phrases <= m.max_position, "data.max_tokens", d.max_tokens,
           f"with data.max_phrases {d.max_phrases} it must fit the model's {m.max_position} positions "
           "(model.max_position)")
    _check(d.max_regions > 0, "data.max_regions", d.max_regions, "must be positive: the model reads regions")
    names = [c.name for c in d.corpora]
    _check(all(n and "/" not in n for n in names) and len(set(names)) == len(names), "data.corpora names", names,
           "expected distinct non-empty names without '/' (they prefix the image ids)")
    o = cfg.objectives
    for key in ("tag_mask_prob", "phrase_mask_prob", "mlm_mask_prob"):
        _check(0 <= getattr(o, key) < 1, f"objectives.{key}", getattr(o, key), "must be within [0, 1)")
    _check(o.wpg_margin >= 0, "objectives.wpg_margin", o.wpg_margin, "must be >= 0")
    _check(e.batch_size > 0, "eval.batch_size", e.batch_size, "must be positive")
    for key in ("max_images", "k_c", "k_i"):
        _check(getattr(e, key) >= 0, f"eval.{key}", getattr(e, key), "must be >= 0")
    known = objective_names(o)
    _check_stage("stage1", cfg.stage1, known, True)
    _check_stage("stage2", cfg.stage2, known, True)
    for key, stage in (("stage1", cfg.stage1), ("stage2", cfg.stage2)):
        _check_warmup(key, stage, o.negative_sampling)
    demo = cfg.demo
    _check(demo.n_process >= 1, "demo.n_process", demo.n_process, "must be at least 1 process")
    check_world_size(demo.n_train, demo.n_val, demo.n_test, demo.image_size,
                     {k: f"demo.{k}" for k in ("n_train", "n_val", "n_test", "image_size")})


def _check_warmup(key: str, stage, negative_sampling: str) -> None:
    _check(stage.negative_warmup_steps == 0 or negative_sampling == "sampled", f"{key}.negative_warmup_steps",
           stage.negative_warmup_steps, "needs objectives.negative_sampling=sampled (the argmax has nothing to "
           "warm up)")


def check_task(key: str, t, cfg, recipe: bool) -> None:
    """A task's settings (``key``: its section, ``finetune.<name>``); ``recipe``: it trains with
    the pre-training recipe (retrieval), whose negative warm-up and loss weights it reads. The
    task's table calls this (``mvptr.tasks``): the tasks are above this layer."""
    _check_finite(t, f"{key}.")
    _check_stage(f"{key}.train", t.train, objective_names(cfg.objectives), False, recipe=recipe)
    for name in ("max_train", "max_eval"):
        _check(getattr(t, name) >= 0, f"{key}.{name}", getattr(t, name), "must be 0 (all) or positive")
    m = cfg.model
    _check(t.max_tokens + t.max_phrases <= m.max_position, f"{key}.max_tokens", t.max_tokens,
           f"with its max_phrases {t.max_phrases} it must fit the model's {m.max_position} positions")
    if recipe:
        _check_warmup(f"{key}.train", t.train, cfg.objectives.negative_sampling)
