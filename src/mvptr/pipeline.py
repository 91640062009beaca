"""The steps a user runs, as functions: build a model, pre-train a stage, evaluate.

The command line (``cli.py``) and the demo are thin layers over these.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .checkpoint.bert_init import init_from_bert, init_phrase_rows, read_bert_dir, shape_mismatches
from .checkpoint.model_dir import Bundle, checkpoint_bytes
from .core import distributed
from .core.config import Config, StageConfig
from .core.errors import ConfigError, SkippedSamples
from .core.fileio import write_json
from .data.pretrain import (
    Collator,
    ImageSource,
    Masking,
    build_pair_dataset,
    caption_records,
    data_captions,
    open_images,
    tag_vocab_from,
)
from .eval.grounding import evaluate_grounding, grounding_examples
from .eval.retrieval import chance_recall, check_all_pairs, encode_images, encode_texts, evaluate_retrieval
from .formats.phrase_cache import phrase_key, read_phrase_cache
from .model.modeling import MVPTR
from .text.phrases import PhraseVocab
from .text.tokenizer import WordPieces, load_tokenizer, minilm_dir, pad_lists
from .train.recipes import pretraining_recipe
from .train.trainer import TrainResult, check_writable, train


def configure_torch(cfg: Config) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)


def image_source(cfg: Config) -> ImageSource:
    return open_images(cfg.data, cfg.model.region_feat_dim)


def training_tag_vocab(cfg: Config) -> list[str]:
    # bad samples are counted when the dataset is built; here they are only passed over
    skip = SkippedSamples() if cfg.data.skip_bad else None
    records = caption_records(cfg.data, cfg.data.train_split, skip)
    return tag_vocab_from(open_images(cfg.data, cfg.model.region_feat_dim, skip),
                          sorted({r.image_id for r in records}), skip_bad=cfg.data.skip_bad)


INIT_HINT = ("pass init.source=DIR, a local BERT directory of the model's size (bert-base-uncased for the "
             "base preset: config.json, model.safetensors or pytorch_model.bin, vocab.txt), or init.source=random")


def init_dir(cfg: Config, source: str | None = None) -> Path | None:
    """The BERT directory ``init.source`` names (None for "random"), checked before any data is
    read: one that is missing or does not fit the model is a ConfigError saying what to pass."""
    source = source or cfg.init.source
    if source == "random":
        return None
    path = minilm_dir() if source == "minilm" else Path(source)
    if not (path / "config.json").is_file() or not any((path / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise ConfigError(f"init.source={source}: not a BERT directory with config.json and a vocabulary; {INIT_HINT}")
    wrong = shape_mismatches(cfg.model, json.loads((path / "config.json").read_text()))
    if wrong:
        name = "the packaged MiniLM-L6" if source == "minilm" else str(path)
        raise ConfigError(f"init.source={source}: {name} does not fit the model ({'; '.join(wrong)}); {INIT_HINT}")
    return path


def new_bundle(cfg: Config, phrase_vocab: PhraseVocab, tag_vocab: list[str], source: str | None = None) -> Bundle:
    """A model initialised from ``source``: "minilm", "random" or a local BERT directory."""
    bert_dir = init_dir(cfg, source)
    tokenizer = load_tokenizer(None if bert_dir is None else bert_dir)
    pieces = WordPieces(tokenizer, cfg.data.max_tokens)
    tag_pieces = pad_lists([list(pieces.pieces(t)) for t in tag_vocab], 0)
    torch.manual_seed(cfg.seed)
    model = MVPTR(cfg.model, len(phrase_vocab), tag_pieces)
    if bert_dir is not None:
        bert_config, state = read_bert_dir(bert_dir)
        init_from_bert(model, bert_config, state, str(bert_dir))
    init_phrase_rows(model, phrase_pieces(phrase_vocab, pieces))
    inputs = {"use_tags": cfg.objectives.use_tags, "use_phrases": cfg.objectives.use_phrases}
    return Bundle(model.to(cfg.device), tokenizer, phrase_vocab, tag_vocab, inputs)


def phrase_pieces(vocab: PhraseVocab, pieces: WordPieces) -> list[list[int]]:
    """The word pieces of each phrase of the vocabulary, in id order."""
    return [[p for w in vocab.words(i) for p in pieces.pieces(w)] for i in range(len(vocab))]


def collator(cfg: Config, bundle: Bundle, masking: Masking | None = None, seed: int | None = None) -> Collator:
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    pieces = WordPieces(bundle.tokenizer, cfg.data.max_tokens)
    return Collator(
        pieces, bundle.tag_vocab, bundle.model.num_phrases,
        cfg.model.vocab_size, cfg.model.tag_mode, cfg.objectives.use_phrases, cfg.objectives.use_tags,
        masking, gen, cfg.objectives.mlm_separate_pass,
        phrase_pieces(bundle.phrase_vocab, pieces) if masking is not None and masking.words else None,
    )


def pretrain_stage(cfg: Config, stage: StageConfig, bundle: Bundle, out_dir: str | Path, resume: bool = False,
                   progress: bool = True, skipped: SkippedSamples | None = None) -> TrainResult:
    """Train one stage. With ``cfg.data.skip_bad``, bad samples go to ``skipped`` (a new
    record unless given) and ``out_dir/skipped.json``; ``out_dir/data.json`` holds the
    samples of each corpus."""
    configure_torch(cfg)
    main = distributed.active().main  # every process reads the same data; one writes
    if main:
        check_writable(Path(out_dir), checkpoint_bytes(bundle.model))  # before reading any data
    recipe = pretraining_recipe(stage.name, list(stage.objectives), cfg.objectives, bundle.model.merged)
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


def phrase_lookup(cfg: Config, vocab: PhraseVocab, split: str, skip: SkippedSamples | None = None):
    # bad records were counted when the dataset was built; here they are only passed over
    quiet = SkippedSamples() if skip is not None else None
    cache = read_phrase_cache(cfg.data.phrase_cache, quiet)
    by_text = {}
    for r in data_captions(cfg.data, [split], quiet):
        tuples = cache.get(phrase_key(r), [])
        by_text[(r.image_id, " ".join(r.caption.lower().split()))] = vocab.encode(tuples, cfg.data.max_phrases)
    return lambda image_id, text: by_text.get((image_id, " ".join(text.lower().split())), [])


@torch.no_grad()
def rank_dataset(cfg: Config, model, dataset, collate, progress: bool = True, keep_pairs: bool = False,
                 subset: tuple[str, int] | None = None) -> tuple[dict, list[str]]:
    """Coarse-to-fine retrieval over a pair dataset's captions and images with ``cfg.eval``'s
    settings (the merged-attention model: ITM over every pair); returns the result and the
    image ids in the order of its indices. ``subset``: the key and value that limited the
    images (default ``eval.max_images``), named when every pair would be too many."""
    e = cfg.eval
    image_ids = sorted(dataset.image_index, key=dataset.image_index.get)
    if model.merged:
        check_all_pairs(len(image_ids), len(dataset), *(subset or ("eval.max_images", e.max_images)))
    text_items = [{"input_ids": dataset.token_ids[i], "phrases": dataset.phrase_ids[i]} for i in range(len(dataset))]
    text_image = torch.tensor([dataset.image_index[r.image_id] for r in dataset.records])
    loader = lambda items: DataLoader(items, batch_size=e.batch_size, collate_fn=collate)  # noqa: E731
    texts = encode_texts(model, loader(text_items), cfg.device)
    images = encode_images(model, loader([dataset.images(i) for i in image_ids]), cfg.device)
    result = evaluate_retrieval(model, texts, images, text_image, e.k_c, e.k_i, e.batch_size, e.rerank_score,
                                progress, e.precision, keep_pairs)
    return result, image_ids


@torch.no_grad()
def evaluate(cfg: Config, bundle: Bundle, progress: bool = True, skipped: SkippedSamples | None = None) -> dict:
    """Zero-shot retrieval (uni-modal and re-ranked) and phrase grounding on ``cfg.eval.split``.

    It reads the single-corpus fields of ``cfg.data`` (``data.corpora`` is for pre-training).
    With ``cfg.data.skip_bad``, bad samples go to ``skipped`` instead of raising.
    """
    model = bundle.model.eval()
    e = cfg.eval
    data = replace(cfg.data, corpora=[])
    skip = (skipped if skipped is not None else SkippedSamples()) if data.skip_bad else None
    pieces = WordPieces(bundle.tokenizer, cfg.data.max_tokens)
    dataset = build_pair_dataset(data, pieces, bundle.phrase_vocab, cfg.model.region_feat_dim, e.split,
                                 e.max_images, skip=skip)
    collate = collator(cfg, bundle)
    retrieval, image_ids = rank_dataset(cfg, model, dataset, collate, progress)
    examples = grounding_examples(e.entities_dir, image_ids, bundle.tokenizer, cfg.data.max_tokens,
                                  phrase_lookup(cfg, bundle.phrase_vocab, e.split, skip), skip=skip)
    chance = {"retrieval": chance_recall(len(image_ids), round(len(dataset) / len(image_ids)))}
    if examples:
        grounding = evaluate_grounding(model, examples, dataset.images, collate, e.batch_size, cfg.device)
        chance["grounding"] = grounding["chance"]
    else:  # a data set without Flickr30k Entities files has no grounding to measure
        grounding = {"skipped": f"{e.entities_dir}: no Flickr30k Entities sentences for the {e.split!r} images"}
    return {
        "retrieval": retrieval,
        "grounding": grounding,
        "chance": chance,
        "images": len(image_ids),
        "captions": len(dataset),
        **({"skipped": skip.summary()["skipped_samples"]} if skip is not None else {}),
    }
