"""What a run reads, built from its configuration and model: the image source, the tag vocabulary,
the collator and the phrase lookup of a split."""

from __future__ import annotations

import torch

from ..checkpoint.model_dir import Bundle
from ..core.config import Config
from ..core.errors import SkippedSamples
from ..formats.phrase_cache import phrase_key, read_phrase_cache
from ..text.phrases import PhraseVocab
from ..text.tokenizer import WordPieces
from .collate import CollateSettings, Collator, Masking
from .pretrain import ImageSource, caption_records, data_captions, open_images, tag_vocab_from


def image_source(cfg: Config) -> ImageSource:
    return open_images(cfg.data, cfg.model.region_feat_dim)
def training_tag_vocab(cfg: Config) -> list[str]:
    # bad samples are counted when the dataset is built; here they are only passed over
    skip = SkippedSamples() if cfg.data.skip_bad else None
    records = caption_records(cfg.data, cfg.data.train_split, skip)
    return tag_vocab_from(open_images(cfg.data, cfg.model.region_feat_dim, skip),
                          sorted({r.image_id for r in records}), skip_bad=cfg.data.skip_bad)
def collator(cfg: Config, bundle: Bundle, masking: Masking | None = None, seed: int | None = None) -> Collator:
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    pieces = WordPieces(bundle.tokenizer, cfg.data.max_tokens)
    o = cfg.objectives
    settings = CollateSettings(cfg.model.tag_mode, o.use_phrases, o.use_tags, masking or Masking(), o.mlm_separate_pass)
    return Collator(pieces, bundle.tag_vocab, bundle.model.num_phrases, cfg.model.vocab_size, settings, gen)
def phrase_lookup(cfg: Config, vocab: PhraseVocab, split: str, skip: SkippedSamples | None = None):
    """(image id, text) -> the text's phrase ids. Without their word positions: the tasks that
    use it mask no word (a collator masking words hides every phrase of such samples)."""
    # bad records were counted when the dataset was built; here they are only passed over
    quiet = SkippedSamples() if skip is not None else None
    cache = read_phrase_cache(cfg.data.phrase_cache, quiet)
    by_text = {}
    for r in data_captions(cfg.data, [split], quiet):
        tuples = cache[phrase_key(r)].tuples if phrase_key(r) in cache else []
        by_text[(r.image_id, " ".join(r.caption.lower().split()))] = vocab.encode(tuples, cfg.data.max_phrases)
    return lambda image_id, text: by_text.get((image_id, " ".join(text.lower().split())), [])
