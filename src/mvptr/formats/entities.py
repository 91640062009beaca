"""Flickr30k Entities: bracket-annotated sentence files and Pascal-VOC-like box XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..core.fileio import PathLike


@dataclass
class EntityPhrase:
    text: str
    entity_id: str
    first_word: int
    types: list[str] = field(default_factory=list)


@dataclass
class EntitySentence:
    text: str
    phrases: list[EntityPhrase]


# "[/EN#<id>/<type>[/<type>...] <words>]"
_ENTITY_RE = re.compile(r"\[/EN#(\w+)((?:/[^\s/\]]+)+)\s+([^\[\]]*?)\s*\]")


def _parse_entity_line(path: PathLike, lineno: int, line: str) -> EntitySentence:
    words: list[str] = []
    phrases = []

    def plain(segment: str) -> None:
        if "[" in segment or "]" in segment:
            raise FormatError(f"{path} line {lineno}: expected phrases as "
                              f"\"[/EN#<id>/<type> words]\", got unmatched bracket in "
                              f"{segment.strip()!r}", "bad entity sentence")
        words.extend(segment.split())

    pos = 0
    for m in _ENTITY_RE.finditer(line):
        plain(line[pos:m.start()])
        phrase_words = m.group(3).split()
        if not phrase_words:
            raise FormatError(f"{path} line {lineno}: expected words in phrase {m.group(0)!r}",
                              "bad entity sentence")
        phrases.append(EntityPhrase(" ".join(phrase_words), m.group(1), len(words),
                                    m.group(2).strip("/").split("/")))
        words.extend(phrase_words)
        pos = m.end()
    plain(line[pos:])
    return EntitySentence(" ".join(words), phrases)


def read_flickr30k_sentences(path: PathLike, skip: SkippedSamples | None = None) -> list[EntitySentence]:
    """Parse a Flickr30k Entities ``Sentences/<image>.txt`` file, one sentence a line.

    ``[/EN#18/people A man] in [/EN#19/clothing an orange hat] starring at something .``
    gives text "A man in an orange hat starring at something ." with phrases
    ("A man", "18", 0, ["people"]) and ("an orange hat", "19", 3, ["clothing"]).
    With ``skip``, a malformed line is recorded there and left out.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(_parse_entity_line(path, n, line))
            except FormatError as err:
                skip_or_raise(skip, err)
    return out


def _xml_int(path: PathLike, elem: ET.Element, tag: str, where: str) -> int:
    child = elem.find(tag)
    try:
        return int(child.text.strip())
    except (AttributeError, ValueError):
        got = None if child is None else child.text
        raise FormatError(f"{path} ({where}): expected an integer <{tag}>, got {got!r}",
                          "bad annotation") from None


def read_flickr30k_annotation(path: PathLike) -> dict:
    """Parse a Flickr30k Entities ``Annotations/<image>.xml`` file.

    Returns ``{"width", "height", "depth", "boxes": {entity_id: [[x1, y1, x2, y2], ...]},
    "nobox": set, "scene": set}``; an object with several ``<name>`` children gives
    its box to each of those entities.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except ET.ParseError as e:
        raise FormatError(f"{path}: malformed XML: {e}", "malformed XML") from None
    size = root.find("size")
    if root.tag != "annotation" or size is None:
        raise FormatError(f"{path}: expected an <annotation> root with a <size> element", "bad annotation")
    out = {key: _xml_int(path, size, key, "size") for key in ("width", "height", "depth")}
    boxes: dict[str, list[list[int]]] = {}
    nobox: set[str] = set()
    scene: set[str] = set()
    for k, obj in enumerate(root.iter("object")):
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(names):
            raise FormatError(f"{path} (object {k}): expected one or more non-empty <name> ids",
                              "bad annotation")
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            where = f"object {k}, entity {names[0]}"
            box = [_xml_int(path, bndbox, t, where) for t in ("xmin", "ymin", "xmax", "ymax")]
            if min(box) < 0 or box[2] < box[0] or box[3] < box[1]:
                raise FormatError(f"{path} ({where}): box {box} is not corners with 0 <= xmin <= xmax and "
                                  "0 <= ymin <= ymax", "bad box")
            for name in names:
                boxes.setdefault(name, []).append(box)
        if (obj.findtext("nobndbox") or "").strip() == "1":
            nobox.update(names)
        if (obj.findtext("scene") or "").strip() == "1":
            scene.update(names)
    out.update(boxes=boxes, nobox=nobox, scene=scene)
    return out


def write_flickr30k_entities(root: PathLike, image_id: str,
                             sentences: Sequence[tuple[Sequence[str], Sequence[tuple]]],
                             boxes: Mapping[str, Sequence[Sequence[int]]],
                             width: int, height: int) -> None:
    """Write ``root/Sentences/<image_id>.txt`` and ``root/Annotations/<image_id>.xml``.

    ``sentences`` holds ``(words, mentions)`` with mentions ``(start, end, entity_id)``
    or ``(start, end, entity_id, type_or_types)`` over word positions, end
    exclusive; the type is "other" when not given. Mentioned entities without
    boxes are written as ``<nobndbox>`` objects.
    """
    root = Path(root)
    lines = []
    mentioned: list[str] = []
    for n, (words, mentions) in enumerate(sentences):
        out, pos = [], 0
        for mention in sorted(mentions, key=lambda m: m[0]):
            start, end, entity_id = mention[:3]
            types = mention[3] if len(mention) > 3 else "other"
            types = [types] if isinstance(types, str) else list(types)
            if not pos <= start < end <= len(words):
                raise FormatError(f"{image_id} sentence {n}: mention ({start}, {end}) overlaps "
                                  f"another or lies outside the {len(words)} words")
            out += words[pos:start]
            out.append(f"[/EN#{entity_id}/{'/'.join(types)} {' '.join(words[start:end])}]")
            pos = end
            if str(entity_id) not in mentioned:
                mentioned.append(str(entity_id))
        out += words[pos:]
        lines.append(" ".join(out))
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    for entity_id, entity_boxes in boxes.items():
        for box in entity_boxes:
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = str(entity_id)
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bndbox, tag).text = str(int(value))
    boxed = {str(k) for k in boxes}
    # Entity 0 marks non-visual phrases, which have no object in the annotation.
    for entity_id in mentioned:
        if entity_id not in boxed and entity_id != "0":
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = entity_id
            ET.SubElement(obj, "nobndbox").text = "1"
            ET.SubElement(obj, "scene").text = "0"
    ET.indent(ann)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(root / "Annotations" / f"{image_id}.xml", encoding="utf-8")
