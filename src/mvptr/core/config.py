"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides.

A run's configuration is the dataclass defaults, then a preset shipped in the
package (``mvptr/configs/<name>.yaml``) or any YAML file, then command-line
overrides. OmegaConf checks every key against the dataclasses, so a misspelt key
is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .objectives import objective_switch
from .validation import validate

# inside the package, so an installed wheel finds its presets wherever it runs
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    text_layers: int = 6
    visual_layers: int = 6
    multimodal_layers: int = 6
    vocab_size: int = 30522
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    region_feat_dim: int = 2054  # detector features + the 6 box numbers, as in VinVL
    # how a region's vector is embedded: "concat" (paper, official code, Oscar/VinVL: one Linear of
    # features and box numbers together) or "separate" (UNITER: the features and the 6 box numbers
    # each through a Linear and a LayerNorm, then added), which keeps the box from being drowned
    region_box: str = "concat"
    embed_dim: int = 768  # width of the global (VSC) embeddings
    temperature: float = 0.07  # initial VSC temperature (learnable)
    # what the global (VSC) embedding projects: the [CLS] output (paper) or the mean of all
    # outputs (for initialisations trained with mean pooling, such as the packaged MiniLM)
    global_pool: str = "cls"
    wpg_layer: int = 3  # multimodal layer (1-based) whose outputs WPG aligns
    # "concepts": one input row per tag class (mean of its word pieces), MCR^v over tag classes.
    # "word_pieces": tags as word-piece tokens, MCR^v over word pieces (official code).
    tag_mode: str = "concepts"
    merged_attention: bool = False  # Table 4 row 7: one encoder over {w, c, t, r}
    # recompute each layer's activations in the backward pass instead of storing them
    activation_checkpointing: bool = False
    # torch.compile each transformer layer with this backend ("inductor" fuses the element-wise
    # work between the products); "none" runs eagerly
    compile: str = "none"
    # "mvptr" (paper: phrases after [SEP], sets share one position) or "official" (the released
    # code's sequences: phrases before [SEP], consecutive positions, [SEP] after the tags, regions
    # embedded without the embedding LayerNorm), for checkpoints from `mvptr convert official`
    layout: str = "mvptr"
    region_layer_norm: bool = False  # official layout only: LayerNorm on region embeddings
    region_layer_norm_eps: float = 1e-12  # its eps (the released config's img_layer_norm_eps)


@dataclass
class InitConfig:
    # "minilm" (packaged MiniLM-L6), "random", or a path to a local BERT-architecture directory.
    source: str = "minilm"


@dataclass
class CorpusConfig:
    """One corpus of a pre-training mix: its own captions, features and phrase cache."""

    name: str = ""  # namespaces its image ids ("<name>/<image id>"); no "/"
    captions: str = ""
    features: str = ""  # VinVL features.tsv or a memmap store directory
    predictions: str = ""  # VinVL predictions.tsv (unused with a store directory)
    phrase_cache: str = ""
    tags: str = ""  # ground-truth tags {image id: [label, ...]} instead of the detector's (see data.tags)


@dataclass
class DataConfig:
    # the folder of a preset's data paths ("${data.root}/captions.json"): data.root=DIR moves them
    # all, a path set by itself stays; no default data: a preset (or the path itself) names each file
    root: str = ""
    captions: str = ""
    features: str = ""  # VinVL features.tsv or a memmap store directory
    predictions: str = ""  # VinVL predictions.tsv (unused with a store directory)
    phrase_cache: str = ""
    phrase_vocab: str = ""
    # a phrase gets a concept embedding when it occurs in at least this many training captions
    # (paper 3.1.1: 50, on 9M captions); `mvptr prepare phrases|vocab` and `mvptr demo` read it
    phrase_min_count: int = 50
    train_split: str = "train"
    max_tokens: int = 35
    max_phrases: int = 5
    max_tags: int = 20
    max_regions: int = 50
    # ground-truth tags, a JSON file {image id: [label, ...]} (`mvptr prepare tags` builds one from
    # COCO instances) that replaces the detector's tags (paper 3.1.2); "" = detector tags
    tags: str = ""
    dedupe_tags: bool = False  # keep each tag class once (official code); False: one tag per detection
    num_workers: int = 0
    # pre-train on several corpora at once; empty = the single corpus named above
    corpora: list[CorpusConfig] = field(default_factory=list)
    # leave out bad samples (counted by reason in skipped.json) instead of stopping at the first
    skip_bad: bool = False
    # the captions' image ids -> the features' ids (every corpus): a regular expression whose first
    # group is the id ("0*(\\d+)$": "coco_522418" and "COCO_val2014_000000391895" -> "522418",
    # "391895"), then a JSON file mapping ids; "" = ids as written
    image_id_pattern: str = ""
    image_id_map: str = ""
    # a JSON file {"groups": [[image id, ...], ...]}: the k-th captions of a group's images are
    # drawn into the same pre-training batch, each the other's hard negative; "" = no groups
    batch_groups: str = ""


@dataclass
class ObjectiveConfig:
    # each objective's switch (the built-in ones: their declarations are mvptr.train.objectives.OBJECTIVES)
    mcr_v: bool = objective_switch()
    mcr_s: bool = objective_switch()
    vsc: bool = objective_switch()
    wpg: bool = objective_switch()
    itm: bool = objective_switch()
    mlm: bool = objective_switch()
    use_phrases: bool = True
    use_tags: bool = True
    tag_mask_prob: float = 0.25
    phrase_mask_prob: float = 0.25
    mlm_mask_prob: float = 0.15
    # "hungarian" (paper) or "aligned" (official code: labels at their own positions)
    mcr_matching: str = "hungarian"
    wpg_margin: float = 0.2
    # "paper": against the sampled hard negative image (p^{s2v}), max over regions, masked phrases
    # left out; "official" (released code): against a uniformly random other image of the batch
    # (its regions from its own caption's pass), a random one of the top 3 regions, every phrase
    wpg_variant: str = "paper"
    # False (official code): phrases are masked for MCR^s but no loss is computed
    mcr_s_loss: bool = True
    # "sampled" (paper): negatives drawn from p^{s2v}/p^{v2s}; "hardest" (official): argmax;
    # "uniform": any other image / caption of the batch alike (see docs/DECISIONS.md)
    negative_sampling: str = "sampled"
    # "half_each" (paper and official code: n negatives, half from each distribution) or "both" (2n, ALBEF)
    itm_negatives: str = "half_each"
    # True: MLM reads its own pass over word-masked captions, and VSC/ITM/WPG see every word
    # (ALBEF style); False: one pass with masked words for everything (official, cheaper)
    mlm_separate_pass: bool = True
    # True (official): a phrase that contains a word masked for MLM is masked and becomes an
    # MCR^s target as well; False: it is masked only in the pass MLM reads (no shortcut either way)
    phrase_mask_tied: bool = False
    # how MCR^v, MCR^s and MLM average over masked items: "token" (over every masked item of the
    # batch, as the official code's cross entropy does) or "sample" (each sample's mean over its own
    # masked items, as eqs. 2, 3 and 9 write it, then the mean over the samples that have any)
    loss_average: str = "token"


@dataclass
class StageConfig:
    name: str = "stage1"
    # which encoders train; "stage1" = uni-modal encoders, "stage2" = everything
    objectives: list = field(default_factory=lambda: ["mcr_v", "mcr_s", "vsc"])
    epochs: float = 1.0
    max_steps: int = 0  # > 0 caps the number of optimizer steps
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.2
    grad_clip: float = 1.0
    log_every: int = 10
    save_every: int = 0  # steps; 0 = only at the end
    # the batch of one step is split into this many forward/backward passes (less memory)
    grad_accum_steps: int = 1
    # "fp32", "bf16" (autocast), "fp16" (autocast with a dynamic loss scaler), or "auto": bf16
    # where the device multiplies it natively, else fp32 (mvptr.core.precision)
    precision: str = "fp32"
    # under torchrun: shard the optimizer state across processes (ZeRO stage 1; torch engine)
    shard_optimizer: bool = False
    # "torch" (DistributedDataParallel) or "deepspeed" (pip install "mvptr[deepspeed]")
    engine: str = "torch"
    zero_stage: int = 2  # DeepSpeed ZeRO stage (deepspeed engine only)
    # pre-training: the learning rate of the parameters only the cross-modal objectives reach
    # (multimodal encoder, ITM and MLM heads) is lr times this; 1 = one rate for all (paper)
    cross_modal_lr_scale: float = 1.0
    # pre-training and retrieval fine-tuning: over this stage's first N steps the ITM / WPG negatives
    # go from uniform to p^{v2s} / p^{s2v} (the sampling logits scaled by step / N); 0 = the
    # paper's hard negatives from the first step
    negative_warmup_steps: int = 0
    # pre-training and retrieval fine-tuning: each objective's weight in this stage's sum; unlisted
    # objectives weigh their declared default (1: the paper's unweighted L1 and L2). Under one AdamW a
    # small weight mostly lowers an objective's share of the update of the parameters it shares with others
    # (docs/DECISIONS.md, "ITM learns")
    loss_weights: dict[str, float] = field(default_factory=dict)
    # steps whose loss or gradients are not finite are skipped (the weights stay); past this many
    # the run stops naming the step and its samples (docs/DECISIONS.md, "Skipped steps")
    max_skipped_steps: int = 0
    # where logged records go: metrics.jsonl always ("jsonl"); "tensorboard" (event files in
    # <out_dir>/tensorboard/, mvptr[track]), "wandb" (mvptr[wandb]), "mlflow" (mvptr[mlflow])
    loggers: list = field(default_factory=lambda: ["jsonl"])


@dataclass
class EvalConfig:
    split: str = "test"
    max_images: int = 0  # 0 = all
    k_c: int = 128  # captions re-ranked per image
    k_i: int = 64  # images re-ranked per caption
    batch_size: int = 128
    # "itm" (paper's code) or "itm+sim" (ITM logit difference plus the uni-modal similarity)
    rerank_score: str = "itm"
    precision: str = "fp32"  # "bf16", "fp16" or "auto" (as in training) runs the re-ranker under autocast
    entities_dir: str = ""  # Flickr30k Entities (Annotations/, Sentences/), for phrase grounding


@dataclass
class DemoConfig:
    """The demo world's folder (a preset's: no default) and the sizes it is made with."""

    data_dir: str = ""
    n_train: int = 3000
    n_val: int = 200
    n_test: int = 500
    image_size: int = 96
    n_process: int = 1
    easyvqa_images: int = 0  # easy-VQA images per split the demo converts (0 = all)
    world_seed: int = 0  # the demo world's scenes and captions (the top-level `seed` is training's)
    probe_groups: int = 100  # Winoground-style groups of each kind `mvptr evaluate probes` renders (0: none)
    # the fraction of training images that come as a scene and its half turn, every relation reversed
    # (docs/DECISIONS.md, "Spatial relations on the demo world")
    turned_pairs: float = 0.0


@dataclass
class TaskConfig:
    """One fine-tuning task: the trainer's settings, the task's files and its evaluation.
    Paths may hold ``{split}``; a field the task does not read must keep its default (each task
    says which it reads: ``mvptr.tasks``). ``train.objectives`` is read by retrieval only."""

    train: StageConfig = field(default_factory=StageConfig)
    train_split: str = "train"  # VQA: several joined by "+", e.g. "train2014+val2014"
    eval_split: str = "test"
    max_train: int = 0  # examples used for training (retrieval: images; 0 = all), a fixed subset
    max_eval: int = 0  # examples evaluated (retrieval: images; 0 = all), a fixed subset
    questions: str = ""  # VQA v2 questions JSON
    annotations: str = ""  # VQA v2 annotations JSON
    hypotheses: str = ""  # SNLI-VE jsonl
    features: str = ""  # region features of the task's images ("" = data.features)
    predictions: str = ""  # and their detections ("" = data.predictions)
    num_answers: int = 3129  # VQA answer vocabulary: the most frequent training answers
    mask_regions: bool = False  # hide every region and tag (a text-only baseline)
    # the task's input limits (0 = data.max_tokens, ...: the pre-training ones)
    max_tokens: int = 0
    max_tags: int = 0
    max_regions: int = 0
    max_phrases: int = 0
    dropout: float = -1.0  # hidden dropout while fine-tuning (as the official --drop_out); < 0 = the model's


# the paper's per-GPU batch sizes (appendix A.3) on 8 GPUs, as our global batch
GPUS = 8


def task_config(name: str, epochs: float, lr: float, batch_size: int, objectives: list | None = None,
                **fields) -> TaskConfig:
    """A task's default settings (its module declares them: ``mvptr.tasks``)."""
    # AdamW, weight decay 0.05, linear decay without warmup (A.3; the official scripts' warmup is 0)
    stage = StageConfig(name=name, objectives=objectives or [], epochs=epochs, lr=lr,
                        batch_size=batch_size, weight_decay=0.05, warmup_ratio=0.0)
    return TaskConfig(train=stage, **fields)


@dataclass
class Config:
    seed: int = 0
    out_dir: str = "runs"
    device: str = "cpu"
    threads: int = 0  # 0 = torch default
    # deterministic kernels: the same seed gives the same weights, also after a resume
    deterministic: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(
            name="stage2", objectives=["mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"], epochs=2.0
        )
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    # fine-tuning (paper appendix A.3): task name -> its settings as the preset and overrides give
    # them; the task's own defaults fill the rest, and its table checks the names (mvptr.tasks)
    finetune: dict[str, Any] = field(default_factory=dict)


def _preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no config file or preset named {name_or_path!r} (presets: {', '.join(known)})")


def _in_mapping(cfg, key: str) -> bool:
    """A new entry of a mapping field (such as stage2.loss_weights), not of a settings section."""
    parent = OmegaConf.select(cfg, key.rpartition(".")[0], default=None) if "." in key else None
    return parent is not None and OmegaConf.is_dict(parent) and OmegaConf.get_type(parent) is dict


def _in_task(key: str) -> bool:
    """A key of a task's section: the task's settings check it (``mvptr.tasks``)."""
    return key.startswith("finetune.") and key.count(".") >= 2


# keys that moved, and where to: a stage's settings apply to that stage, the phrase threshold is the
# data's (docs/DECISIONS.md)
MOVED_KEYS = {
    "demo.min_count": "data.phrase_min_count (the phrase vocabulary's threshold, also read by base)",
    "objectives.negative_warmup_steps": "stage2.negative_warmup_steps (pre-training) and "
                                        "finetune.retrieval.train.negative_warmup_steps (retrieval fine-tuning)",
    "objectives.loss_weights": "stage1.loss_weights / stage2.loss_weights (pre-training) and "
                               "finetune.retrieval.train.loss_weights (retrieval fine-tuning)",
}


def _check_moved(key: str, where: str) -> None:
    for old, new in MOVED_KEYS.items():
        if key == old or key.startswith(old + "."):
            raise ConfigError(f"{key}{where}: this setting has moved; set {new} instead")


def _moved_in(loaded, path: Path) -> None:
    for old in MOVED_KEYS:
        if OmegaConf.is_dict(loaded) and OmegaConf.select(loaded, old, default="__missing__") != "__missing__":
            _check_moved(old, f" in {path}")


def load_config(preset: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Defaults <- preset YAML <- ``key=value`` overrides; unknown keys raise ConfigError."""
    cfg = OmegaConf.structured(Config)
    source = ""
    try:
        if preset:
            path = _preset_path(preset)
            source = f" in {path}"
            loaded = OmegaConf.load(path)
            _moved_in(loaded, path)
            cfg = OmegaConf.merge(cfg, loaded)
        for item in overrides:
            source = f" in override {item!r}"
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, value = item.split("=", 1)
            _check_moved(key, "")
            if not key or (OmegaConf.select(cfg, key, default="__missing__") == "__missing__"
                           and not _in_mapping(cfg, key) and not _in_task(key)):
                raise ConfigError(f"unknown config key {key!r}")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]))
    except (OmegaConfBaseException, yaml.YAMLError, TypeError) as err:  # wrong types, unparsable keys or values
        raise ConfigError(f"bad config{source}: {_one_line(err)}") from None
    cfg = OmegaConf.to_object(cfg)
    validate(cfg)
    return cfg


def _one_line(err: Exception) -> str:
    """OmegaConf's and PyYAML's several-line messages as one line: the key or the place, and the problem."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem} (a YAML syntax error)"
    first = (getattr(err, "msg", None) or str(err)).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {first}" if key else first


def task_section(defaults: TaskConfig, given: Any, key: str) -> TaskConfig:
    """A task's settings: ``given`` (its section of ``Config.finetune``: a mapping or a
    TaskConfig) over the task's ``defaults``; a key or value TaskConfig has no room for is an
    error naming ``key``."""
    if given is not None and not isinstance(given, (dict, TaskConfig)):
        raise ConfigError(f"{key} = {given!r}: expected the task's settings (a mapping of TaskConfig keys)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(defaults), given if given is not None else {})
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, TypeError) as err:
        raise ConfigError(f"bad config: {key}.{_one_line(err)}") from None


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), str(path))


def model_config_from_dict(d: dict) -> ModelConfig:
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), d)
    return OmegaConf.to_object(cfg)
