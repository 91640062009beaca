"""Groups of images whose captions are drawn into the same pre-training batch.

A group's images are each other's hard negatives: the demo world's turned pairs (a scene and
its half turn) differ only in where their shapes are, so contrastive matching and ITM inside
such a batch cannot tell the pair apart without the regions' positions. The file is JSON,
``{"groups": [[image id, ...], ...]}``; an image belongs to one group at most.
"""

from __future__ import annotations

from ..core.errors import FormatError
from ..core.fileio import load_json
from ..formats.captions import CaptionRecord

__all__ = ["load_batch_groups", "batch_units"]


def load_batch_groups(path: str) -> list[list[str]]:
    """The groups of ``path``, each a list of image ids; errors name the file and the entry."""
    doc = load_json(path)
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list):
        raise FormatError(f'{path}: expected {{"groups": [[image id, ...], ...]}}; write the file in that form')
    seen: dict[str, int] = {}
    for g, group in enumerate(groups):
        if not isinstance(group, list) or not all(isinstance(i, str) for i in group):
            raise FormatError(f"{path}: group {g} is not a list of image ids (strings)")
        for image_id in group:
            if image_id in seen:
                raise FormatError(f"{path}: image {image_id} is in group {seen[image_id]} and in group {g}; "
                                  f"an image belongs to one group at most")
            seen[image_id] = g
    return groups


def batch_units(records: list[CaptionRecord], groups: list[list[str]]) -> list[list[int]]:
    """The sampler's units over ``records``' indices: for each group, its images' k-th captions
    together (k = 0, 1, ...); every caption of an image in no group is a unit of its own. Ids of
    a group that are not among ``records`` (another split's images) are passed over."""
    captions: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        captions.setdefault(r.image_id, []).append(i)
    grouped = set()
    units = []
    for group in groups:
        present = [captions[image_id] for image_id in group if image_id in captions]
        grouped.update(image_id for image_id in group if image_id in captions)
        for k in range(max(map(len, present), default=0)):
            units.append([caps[k] for caps in present if k < len(caps)])
    units += [[i] for image_id, caps in captions.items() if image_id not in grouped for i in caps]
    return units
