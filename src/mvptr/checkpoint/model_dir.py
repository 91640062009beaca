"""Model directories and training state, written atomically.

A model directory holds ``config.json``, ``model.safetensors``, the tokenizer files,
``phrase_vocab.json`` and ``tag_vocab.json``. Optimiser/scheduler/RNG state goes to a
separate ``training_state.pt`` that loads with ``weights_only=True``.

A directory is written beside its final place (``NAME.tmp.<pid>.<random>``, one per writer), flushed to disk, then
swapped in by renames, so a process killed at any moment leaves either the old or the
new directory complete; :func:`recover_dir` finishes an interrupted swap.

Weights in pickle files (``pytorch_model.bin``, ``*.pt``) can run code when loaded:
they are refused unless the caller says the file is trusted (``trust_pickle=True``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.config import Config, ModelConfig, model_config_from_dict, to_dict
from ..core.errors import ConfigError, FormatError, MissingFileError, UntrustedPickleError
from ..core.fileio import naming, recover_dir, replace_dir, tmp_dir, write_text_atomic
from ..model.modeling import MVPTR
from ..model.task_models import TaskModel
from ..text.phrases import PhraseVocab
from ..text.tokenizer import load_tokenizer
from .hub import resolve_model_dir
from .model_card import CARD_FILE, model_card

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
# what defines a model (besides a task head's files): its settings, weights, tokenizer and
# vocabularies; anything else in the directory (a training state, results, a card) does not


def defines_model(name: str, task_files: tuple[str, ...] = ()) -> bool:
    return (name in ("config.json", MODEL_FILE, "phrase_vocab.json", "tag_vocab.json", "vocab.txt",
                     "special_tokens_map.json", *task_files) or name.startswith("tokenizer"))
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.pth")
# config.json's "format": the versions this mvptr reads, and the one it writes
FORMAT = "mvptr/1"
FORMATS_READ = ("mvptr/1",)
# the input limits (data.<key>) a model was trained with, recorded in config.json's "limits"
LIMIT_KEYS = ("max_tokens", "max_phrases", "max_tags", "max_regions")
REWRITE = "rewrite it from the run that trained the model (its checkpoint), or train the model again"


# settings outside ModelConfig that change what the model sees (objectives.<key>)
INPUT_KEYS = ("use_tags", "use_phrases")
# ModelConfig fields a trained model may take from a run: they leave every weight's shape alone
RUNTIME_MODEL_KEYS = ("dropout", "attention_dropout", "wpg_layer", "activation_checkpointing", "compile")


@dataclass
class Bundle:
    """A trained model with everything needed to feed it: what one model directory holds.

    - ``model``: the :class:`~mvptr.model.modeling.MVPTR` network (weights, settings in
      ``model.cfg``, the tag classes' word pieces in ``model.tag_pieces``);
    - ``tokenizer``: the word-piece tokenizer whose ids index ``model.word_rows``;
    - ``phrase_vocab``: phrase -> concept index; ``len(phrase_vocab) == model.num_phrases``, and
      phrase i is row i of ``model.phrase_rows``;
    - ``tag_vocab``: the detector class names, in the order of the rows of ``model.tag_pieces``;
    - ``inputs``, ``limits``, ``trained``, ``card``: how it was trained (below), for the
      settings a later run adopts (:func:`adopt_model_settings`) and for its model card.

    Promises: :meth:`save_pretrained` writes one directory atomically (config.json,
    model.safetensors, tokenizer files, phrase_vocab.json, tag_vocab.json, the card), and
    :func:`load_model_dir` on it gives back a bundle with the same weights, tokenizer,
    vocabularies, ``inputs``, ``limits`` and ``trained``; a directory that does not hold one
    (missing or damaged files, vocabularies that do not fit the weights) is a
    :class:`~mvptr.core.errors.FormatError` or :class:`~mvptr.core.errors.MissingFileError`
    naming the file. A bundle holds no run settings beyond these: those are a ``Config``'s.
    """

    model: MVPTR
    tokenizer: object
    phrase_vocab: PhraseVocab
    tag_vocab: list[str]
    # the INPUT_KEYS the model was trained with ({} when a directory predates them)
    inputs: dict = field(default_factory=dict)
    # the LIMIT_KEYS it was trained with ({} when unknown: a directory that predates them)
    limits: dict = field(default_factory=dict)
    # the objectives that trained its heads, over all its stages (None when unknown)
    trained: list[str] | None = None
    # what its runs noted for its model card (model_card.note_run, note_evaluation)
    card: dict = field(default_factory=dict)
    # a fine-tuned model's task.json (task_dir.load_task_model); None for a pre-trained model
    task: dict | None = None

    def save_pretrained(self, path: str | Path, training_state: dict | None = None) -> Path:
        return save_model_dir(path, self, training_state)

    def __repr__(self) -> str:  # the dataclass's would print every layer of the model
        params = sum(p.numel() for p in self.model.parameters())
        return (f"Bundle({type(self.model).__name__}, {params / 1e6:.1f}M parameters, merged={self.model.merged}, "
                f"{len(self.phrase_vocab)} phrases, {len(self.tag_vocab)} tags, "
                f"trained={self.trained if self.trained is not None else 'unknown'})")


def record_training(bundle: Bundle, data, objectives) -> None:
    """Note in ``bundle`` (saved to config.json) what a run trains it with: the input limits of
    ``data`` (a DataConfig) and ``objectives``, added to those of its earlier stages."""
    bundle.limits = {k: int(getattr(data, k)) for k in LIMIT_KEYS}
    bundle.trained = sorted(set(bundle.trained or ()) | set(objectives))


def has_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a complete checkpoint (a model directory with training state)."""
    return (recover_dir(path) / STATE_FILE).exists()


def save_model_dir(path: str | Path, bundle: Bundle, training_state: dict | None = None,
                   extra: Callable[[Path], None] | None = None, weights: dict | None = None) -> Path:
    """Write the directory beside its final place, then swap it in; ``extra(tmp)`` may add files
    (a task head, say) so that they arrive with the rest or not at all. ``weights`` replaces the
    model's own state dict (the fp32 master weights of a 16-bit DeepSpeed module)."""
    final = Path(path)
    tmp = tmp_dir(final)
    try:
        with naming(final):
            _write_model_files(tmp, bundle, training_state, extra, weights)
            replace_dir(tmp, final)
    finally:
        if tmp.exists():  # a failed write (a full disk, say): the old directory stays as it was
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_model_files(tmp: Path, bundle: Bundle, training_state: dict | None, extra, weights: dict | None) -> None:
    model = bundle.model
    config = {"model": to_dict(model.cfg), "inputs": dict(bundle.inputs), "num_phrases": model.num_phrases,
              "format": FORMAT}
    if bundle.limits:
        config["limits"] = dict(bundle.limits)
    if bundle.trained is not None:
        config["trained_objectives"] = list(bundle.trained)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in (weights or model.state_dict()).items()}
    try:
        save_file(state, str(tmp / MODEL_FILE))
    except SafetensorError as err:  # its I/O errors come as text: "IoError(Os { code: 28, ... })"
        code = re.search(r"code: (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from err
    bundle.tokenizer.save_pretrained(str(tmp))
    bundle.phrase_vocab.save(tmp / "phrase_vocab.json")
    (tmp / "tag_vocab.json").write_text(json.dumps(bundle.tag_vocab, indent=1))
    if training_state is not None:
        # through a Python file: a full disk is then an OSError (torch's own writer raises a RuntimeError)
        with naming(tmp / STATE_FILE), open(tmp / STATE_FILE, "wb") as f:
            torch.save(training_state, f)
    (tmp / CARD_FILE).write_text(model_card(bundle.card))
    if extra is not None:
        extra(tmp)


def write_model_card(path: str | Path, bundle: Bundle) -> None:
    """Replace the card of the model directory ``path`` (atomically) with ``bundle``'s."""
    write_text_atomic(Path(path) / CARD_FILE, model_card(bundle.card))


def save_pretrained(model: MVPTR, path: str | Path, tokenizer, phrase_vocab: PhraseVocab, tag_vocab: list[str],
                    training_state: dict | None = None) -> Path:
    """Write ``model``'s directory atomically: config, safetensors weights, tokenizer, vocabularies."""
    return save_model_dir(path, Bundle(model, tokenizer, phrase_vocab, list(tag_vocab)), training_state)


def from_pretrained(name_or_path: str | Path, device: str = "cpu", trust_pickle: bool = False, **hub) -> MVPTR:
    """The model of a model directory or of a Hugging Face Hub repo id (``hub``: ``revision``,
    ``cache_dir``, ``local_files_only``, ``token``; see :func:`.hub.resolve_model_dir`).
    :func:`load_model_dir` also gives the tokenizer and vocabularies; ``task_dir.load_pretrained``
    a fine-tuned model with its head. Missing, unexpected or misshapen weights are an error."""
    return load_model_dir(resolve_model_dir(name_or_path, **hub), device, trust_pickle).model


def load_weights(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a pickle file when ``trust_pickle`` says it is safe."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:  # reported without the file's name
            raise FormatError(f"{path}: not a readable safetensors file, truncated or damaged ({err}); copy it "
                              f"again from where the model was trained, or {REWRITE}", "model directory") from None
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{path} is a pickle file, and loading a pickle can run arbitrary code; if you trust its source, "
            "pass trust_pickle=True (command line: --trust-pickle)"
        )
    try:  # even a trusted pickle is read as tensors and containers only, never as code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message spans many lines
        raise FormatError(f"{path}: damaged, or holds more than tensors and containers (torch.load with "
                          "weights_only=True refused it); re-save its state dict alone, or as safetensors",
                          "model directory") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise FormatError(f"{path}: not a state dict of tensors", "model directory")
    return state


def weights_file(path: Path) -> Path:
    for name in (MODEL_FILE, *PICKLE_FILES):
        if (path / name).exists():
            return path / name
    raise MissingFileError(f"{path}: no {MODEL_FILE} (nor {', '.join(PICKLE_FILES)})")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"{path}: not found (is {path.parent} an mvptr model directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{path}: not valid JSON ({err})", "model directory") from None


def load_model_dir(path: str | Path, device: str = "cpu", trust_pickle: bool = False, strict: bool = True) -> Bundle:
    """Model, tokenizer and vocabularies of a model directory. Weights must fit exactly; with
    ``strict=False`` missing weights keep their initialisation and unexpected ones are left out
    (both are reported in a warning), but a weight of the wrong shape is still an error."""
    path = recover_dir(path)
    cfg_file = path / "config.json"
    config = _read_json(cfg_file)
    if not isinstance(config, dict) or str(config.get("format", "")).split("/")[0] != "mvptr":
        raise FormatError(f"{cfg_file}: not an mvptr model directory "
                          "(for official checkpoints use `mvptr convert official`)", "model directory")
    if config["format"] not in FORMATS_READ:
        raise FormatError(f"{cfg_file}: model directory format {config['format']!r}; this mvptr reads "
                          f"{', '.join(FORMATS_READ)}: use the mvptr version that wrote it, or a newer one",
                          "model directory")
    source = weights_file(path)
    state = {k: v.to(device) for k, v in load_weights(source, trust_pickle).items()}
    if "tag_pieces" not in state:
        raise FormatError(f"{source}: no tag_pieces buffer; not written by mvptr", "model directory")
    try:
        model = MVPTR(model_config_from_dict(config["model"]), int(config["num_phrases"]), state["tag_pieces"])
    except (KeyError, TypeError, ValueError, OmegaConfBaseException) as err:
        raise FormatError(f"{cfg_file}: bad model configuration ({str(err).strip().splitlines()[0]})",
                          "model directory") from None
    report = load_state(model, state, str(source), strict)
    if report["missing"] or report["unexpected"]:
        warnings.warn(f"{source}: missing {report['missing']}, unexpected {report['unexpected']}", stacklevel=2)
    try:
        phrase_vocab = PhraseVocab.load(path / "phrase_vocab.json")
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path / 'phrase_vocab.json'}: not a phrase vocabulary ({err})", "model directory") from None
    if len(phrase_vocab) != model.num_phrases:
        raise FormatError(f"{path}: phrase_vocab.json has {len(phrase_vocab)} phrases, the model {model.num_phrases}",
                          "model directory")
    inputs = config.get("inputs", {})
    if not isinstance(inputs, dict) or not all(k in INPUT_KEYS and isinstance(v, bool) for k, v in inputs.items()):
        raise FormatError(f"{cfg_file}: 'inputs' must map some of {', '.join(INPUT_KEYS)} to true or false",
                          "model directory")
    limits, trained = _training_record(config, cfg_file)
    bundle = Bundle(model.to(device), _tokenizer(path), phrase_vocab, _read_json(path / "tag_vocab.json"), inputs,
                    limits, trained)
    check_complete(path, bundle, state)
    return bundle


def _training_record(config: dict, cfg_file: Path) -> tuple[dict, list[str] | None]:
    """config.json's input limits and trained objectives (absent in older directories)."""
    limits, trained = config.get("limits", {}), config.get("trained_objectives")
    if not isinstance(limits, dict) or not all(k in LIMIT_KEYS and isinstance(v, int) and not isinstance(v, bool)
                                               and v > 0 for k, v in limits.items()):
        raise FormatError(f"{cfg_file}: 'limits' must map some of {', '.join(LIMIT_KEYS)} to positive whole "
                          f"numbers; {REWRITE}", "model directory")
    if trained is not None and not (isinstance(trained, list) and all(isinstance(t, str) for t in trained)):
        raise FormatError(f"{cfg_file}: 'trained_objectives' must be a list of objective names; {REWRITE}",
                          "model directory")
    return limits, trained


def _tokenizer(path: Path):
    """The model directory's tokenizer; files transformers cannot read are a FormatError naming them."""
    try:
        return load_tokenizer(path)
    except Exception as err:  # noqa: BLE001  (transformers and tokenizers raise many kinds, none naming the file)
        where = path / "tokenizer.json" if (path / "tokenizer.json").exists() else path
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FormatError(f"{where}: not a readable tokenizer ({type(err).__name__}: {first}); copy the tokenizer "
                          "files (tokenizer.json, vocab.txt, tokenizer_config.json) again from the directory the "
                          "model was trained from", "model directory") from None


def rebuild_model(bundle: Bundle, cfg: ModelConfig) -> None:
    """Give ``bundle`` a model built with ``cfg`` (same weight shapes) holding the old one's
    weights and task head, e.g. with another dropout."""
    old = bundle.model
    if isinstance(old, TaskModel):
        model = type(old).build(cfg, old.num_phrases, old.tag_pieces, **old.task_args())
    else:
        model = MVPTR(cfg, old.num_phrases, old.tag_pieces)
    load_state_strict(model, old.state_dict(), "the model being rebuilt")
    bundle.model = model.to(old.tag_pieces.device).train(old.training)


def adopt_model_settings(cfg: Config, bundle: Bundle, overrides=(), source: str = "the model directory") -> Config:
    """The run's configuration with the settings of a trained model: its ``model`` section and
    its inputs (``objectives.use_tags`` / ``use_phrases``), so that evaluation and fine-tuning
    feed it what it was trained on. A ``model.<key>=value`` among the command line's
    ``overrides`` that differs from the model's is applied when it leaves the weights' shapes
    alone (:data:`RUNTIME_MODEL_KEYS`, the model is rebuilt with it) and is otherwise a
    :class:`ConfigError` naming the key; so is an ``objectives.use_tags`` / ``use_phrases``
    override against the model's. The preset's ``model`` section is not used."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    saved, changes = bundle.model.cfg, {}
    for key in sorted(k[len("model."):] for k in keys if k.startswith("model.")):
        wanted, have = getattr(cfg.model, key), getattr(saved, key)
        if wanted == have:
            continue
        if key not in RUNTIME_MODEL_KEYS:
            raise ConfigError(f"model.{key}={wanted}: {source} holds a model built with {key}={have}; a trained "
                              f"model takes only these model overrides: {', '.join(RUNTIME_MODEL_KEYS)}")
        changes[key] = wanted
    layers = saved.multimodal_layers
    if "wpg_layer" in changes and not 1 <= changes["wpg_layer"] <= layers:
        raise ConfigError(f"model.wpg_layer={changes['wpg_layer']}: {source} holds a model with {layers} multimodal "
                          f"layers; WPG reads one of them, 1..{layers}")
    for key in INPUT_KEYS:
        if f"objectives.{key}" in keys and key in bundle.inputs and getattr(cfg.objectives, key) != bundle.inputs[key]:
            raise ConfigError(f"objectives.{key}={getattr(cfg.objectives, key)}: {source} holds a model trained "
                              f"with {key}={bundle.inputs[key]}; it sees what it was trained on")
    if changes:
        rebuild_model(bundle, replace(saved, **changes))
    bundle.inputs = {k: bundle.inputs.get(k, getattr(cfg.objectives, k)) for k in INPUT_KEYS}
    return replace(cfg, model=bundle.model.cfg, objectives=replace(cfg.objectives, **bundle.inputs))


def check_complete(path: Path, bundle: Bundle, state: dict[str, torch.Tensor]) -> None:
    """Refuse a model directory whose parts do not belong together: a tokenizer that is not the
    model's (missing files make transformers fall back to a near-empty one, and every word
    becomes [UNK]), a tag vocabulary of another size than the tag table, non-finite weights."""
    words = bundle.model.cfg.vocab_size
    if len(bundle.tokenizer) != words:
        raise FormatError(f"{path}: the tokenizer has {len(bundle.tokenizer)} tokens, the model's word table "
                          f"{words}: its tokenizer files (vocab.txt, tokenizer.json) are missing or another "
                          "model's; copy them from the directory the model was trained from", "model directory")
    tags = bundle.tag_vocab
    if not isinstance(tags, list) or len(tags) != len(bundle.model.tag_pieces):
        raise FormatError(f"{path / 'tag_vocab.json'}: {len(tags) if isinstance(tags, list) else 'no list of'} tags, "
                          f"the model's tag table {len(bundle.model.tag_pieces)}: the vocabulary is another model's",
                          "model directory")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FormatError(f"{path}: non-finite weights (NaN or inf) in {', '.join(bad[:5])}"
                          f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}: the model diverged or the "
                          "file is damaged; use an earlier checkpoint", "model directory")


def load_state(model: torch.nn.Module, state: dict, source: str, strict: bool = True) -> dict:
    """Load ``state`` into ``model``: a shape mismatch is always an error, missing or unexpected
    weights only when ``strict``. Returns {"missing": [...], "unexpected": [...]}."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        raise FormatError(
            f"{source}: does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {shapes[:10]}"
        , "model directory")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def load_state_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    load_state(model, state, source, strict=True)


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Disk a training checkpoint needs: weights and two Adam moments, twice over while a new
    checkpoint replaces the old one, plus tokenizer and vocabularies."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 2 * 3 * weights + 16 * 2**20


def load_training_state(path: str | Path) -> dict:
    """The training state of the checkpoint ``path`` (plain data: ``weights_only``); a file that
    does not load is a FormatError naming it."""
    file = recover_dir(path) / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FormatError(f"{file}: damaged training state ({type(err).__name__}: {first}); resume from a copy, "
                          f"or remove {file.parent} to train the stage from its start", "model directory") from None
