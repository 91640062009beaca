"""Phrase grounding examples from Flickr30k Entities files: word pieces, phrase concepts and
the mentions with their boxes, one example per sentence."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..formats.entities import read_flickr30k_annotation, read_flickr30k_sentences


def grounding_examples(entities_dir: str | Path, image_ids, tokenizer, max_tokens: int, phrase_lookup,
                       skip: SkippedSamples | None = None) -> list[dict]:
    """One example per sentence: word pieces, phrase concepts and the mentions with boxes.

    phrase_lookup(image_id, sentence_text) -> list of phrase ids (may be empty). With ``skip``,
    an image whose annotation is bad, or a bad sentence line, is left out and recorded there.
    """
    root = Path(entities_dir)
    examples = []
    for image_id in image_ids:
        ann_file = root / "Annotations" / f"{image_id}.xml"
        sent_file = root / "Sentences" / f"{image_id}.txt"
        if not ann_file.exists() or not sent_file.exists():
            # one file without the other would leave the image out unseen; an image with neither has no entities
            if sent_file.exists():
                skip_or_raise(skip, FormatError(f"{ann_file}: file not found (the boxes of {sent_file})",
                                                "file not found"))
            elif ann_file.exists():
                skip_or_raise(skip, FormatError(f"{sent_file}: file not found (the sentences of {ann_file}, "
                                                f"image {image_id})", "no sentences file"))
            continue
        try:
            boxes = read_flickr30k_annotation(ann_file)["boxes"]
        except FormatError as err:
            skip_or_raise(skip, err)
            continue
        for index, sentence in enumerate(read_flickr30k_sentences(sent_file, skip)):
            words = sentence.text.split()
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_tokens)
            word_ids = enc.word_ids()
            mentions = []
            for ph in sentence.phrases:
                if ph.entity_id not in boxes:
                    continue
                span = range(ph.first_word, ph.first_word + len(ph.text.split()))
                pos = [i for i, w in enumerate(word_ids) if w is not None and w in span]
                if pos:
                    mentions.append((pos, boxes[ph.entity_id]))
            if mentions:
                examples.append({
                    "image_id": image_id,
                    "sentence_index": index,
                    "input_ids": enc["input_ids"],
                    "phrases": phrase_lookup(image_id, sentence.text),
                    "mentions": mentions,
                })
    return examples
