"""SNLI-VE: ``snli_ve_{train,dev,test}.jsonl`` (and IGLUE's XVNLI variant)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..core.errors import FormatError, SkippedSamples
from ..core.fileio import PathLike, read_text

# --------------------------------------------------------------------------- SNLI-VE

VE_LABELS = ("entailment", "neutral", "contradiction")


@dataclass
class VEPair:
    image_id: str  # Flickr30K_ID
    hypothesis: str  # sentence2
    label: str  # gold_label
    premise: str = ""  # sentence1, the caption the hypothesis was written for
    pair_id: str = ""
    where: str = field(default="", compare=False, repr=False)  # "file:line" of the row


class VEPairs(list):
    """The pairs of an SNLI-VE file, and ``unlabelled``: how many rows had no gold label."""

    unlabelled: int = 0


def _ve_image_id(row: dict) -> str:
    """``Flickr30K_ID`` ("2248275918"), else ``Flikr30kID``, as the original generator spelt it
    ("2248275918.jpg") and IGLUE's XVNLI writes it ("2248275918")."""
    if "Flickr30K_ID" in row:
        return str(row["Flickr30K_ID"])
    image = str(row["Flikr30kID"])
    return image[:-4] if image.lower().endswith(".jpg") else image


def read_snli_ve(path: PathLike, skip: SkippedSamples | None = None) -> VEPairs:
    """An SNLI-VE-format jsonl file (``snli_ve_{train,dev,test}.jsonl``, IGLUE's XVNLI):
    the image (``Flickr30K_ID`` or ``Flikr30kID``), ``sentence2`` and ``gold_label``.

    A row whose gold label is "-" (annotators did not agree) is left out and counted in
    ``unlabelled``, and recorded in ``skip`` when given; any other bad row is an error."""
    lines = read_text(path).splitlines()
    out = VEPairs()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = VEPair(_ve_image_id(row), str(row["sentence2"]), str(row["gold_label"]),
                          str(row.get("sentence1", "")), str(row.get("pairID", "")), f"{path}:{lineno}")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise FormatError(f"{path}:{lineno}: expected a JSON object with Flickr30K_ID (or Flikr30kID), "
                              "sentence2 and gold_label", "bad SNLI-VE line") from None
        if pair.label == "-":
            out.unlabelled += 1
            if skip is not None:
                skip.add(FormatError(f"{path}:{lineno}: gold_label \"-\" (no annotator majority)", "no gold label"))
            continue
        if pair.label not in VE_LABELS:
            raise FormatError(f"{path}:{lineno}: gold_label {pair.label!r} is not one of {', '.join(VE_LABELS)}",
                              "bad SNLI-VE line")
        out.append(pair)
    return out


def write_snli_ve(path: PathLike, pairs: Iterable[VEPair]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"Flickr30K_ID": p.image_id, "sentence1": p.premise, "sentence2": p.hypothesis,
                                 "gold_label": p.label, "annotator_labels": [p.label], "pairID": p.pair_id}) + "\n"
                     for p in pairs)
