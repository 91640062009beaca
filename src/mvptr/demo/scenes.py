"""Scenes of the demo world: coloured shapes on a plain background, rendered to pixels,
and the captions that describe them (their words, relations and counts)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# circle, rectangle, triangle and the colours but purple are easy-VQA's. Words the
# parser often reads as nouns after an adjective ("cross", "orange", "cyan") are avoided.
__all__ = ["SHAPES", "COLORS", "SIZES", "RELATIONS", "SIDE_BY_SIDE", "WorldObject", "Caption", "render_scene",
           "render_turned_pair", "world_scenes", "render_placed", "footprint", "relation", "make_captions"]

SHAPES = ("circle", "rectangle", "triangle", "square", "star", "diamond", "heart")
COLORS = {
    "red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
    "teal": (0, 128, 128), "brown": (130, 80, 30), "gray": (128, 128, 128), "black": (25, 25, 25),
    "purple": (130, 40, 165),
}
SIZES = ("small", "big")
SIZE_WORDS = {"small": ("small",), "big": ("big", "large")}
# Wordings of where the first shape is relative to the second. Each fact is also told
# from the other shape's side ("B below A" for "A above B").
RELATIONS = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "left": ("left of",),
    "right": ("just right of",),
}
SIDE_BY_SIDE = ("next to", "beside")  # for shapes left / right of each other and level
_OPPOSITE = {"above": "below", "below": "above", "left": "right", "right": "left"}
# Sentence frames of a relation caption, each with the wordings it is not used with
# because the scene-graph parser then loses the relation edge between the two shapes.
_FRAMES = (
    ("{A} {R} {B}", ()),
    ("{A} {R} {B} on a light background", ("just right of",)),
    ("{A} {R} {B} in the picture", ("just right of",)),
    ("{A} sits {R} {B}", ("left of", "just right of")),
    ("there is {A} {R} {B}", ("just right of", "beneath", "next to", "beside")),
)
_NUMBERS = {2: "two", 3: "three", 4: "four"}
# Object sizes as fractions of the image side (longest side of the shape).
_SIZE_RANGE = {"small": (0.15, 0.21), "big": (0.28, 0.375)}
_RECT_ASPECT = 0.55  # short side / long side of a rectangle
_GAP = 3  # min. pixels between shapes, so that connected components separate them
_MARGIN = 2  # shapes keep off the image border, which the detector takes as background
@dataclass
class WorldObject:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2: extent of the pixels at least half covered

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
@dataclass
class Caption:
    words: list[str]  # with punctuation as separate words, first word capitalised
    mentions: list[tuple[int, int, int]]  # (start word, end word (exclusive), object index)

    @property
    def raw(self) -> str:
        text = " ".join(self.words)
        for p in (" :", " ,", " ."):
            text = text.replace(p, p[1])
        return text
def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of a star or heart, (k, 2) points, in arbitrary units (y down)."""
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.48)
        return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], 1)
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)  # heart curve
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], 1)
@functools.lru_cache(maxsize=None)
def _alpha(shape: str, w: int, h: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of a shape filling a w x h box."""
    big_w, big_h = w * supersample, h * supersample
    canvas = Image.new("L", (big_w, big_h), 0)
    draw = ImageDraw.Draw(canvas)
    right, bottom = big_w - 1, big_h - 1
    if shape == "circle":
        draw.ellipse([0, 0, right, bottom], fill=255)
    elif shape in ("rectangle", "square"):
        draw.rectangle([0, 0, right, bottom], fill=255)
    elif shape == "triangle":
        draw.polygon([(right / 2, 0), (right, bottom), (0, bottom)], fill=255)
    elif shape == "diamond":
        draw.polygon([(right / 2, 0), (right, bottom / 2), (right / 2, bottom), (0, bottom / 2)], fill=255)
    elif shape in ("star", "heart"):
        pts = _unit_polygon(shape)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)) * [right, bottom]
        draw.polygon([tuple(p) for p in pts], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas.reduce(supersample), dtype=np.float32) / 255.0
def _footprint(shape: str, size: str, image_size: int, rng: np.random.Generator) -> tuple[int, int]:
    lo, hi = _SIZE_RANGE[size]
    side = int(rng.integers(round(lo * image_size), round(hi * image_size) + 1))
    if shape != "rectangle":
        return side, side
    short = max(2, round(side * _RECT_ASPECT))
    return (side, short) if rng.random() < 0.5 else (short, side)
def _place(footprints: list[tuple[int, int]], image_size: int, rng: np.random.Generator,
           tries: int = 60) -> list[tuple[int, int]] | None:
    """Top-left corners for boxes of the given sizes, ``_GAP`` apart; None when they do not fit."""
    placed: list[tuple[int, int, int, int]] = []
    for w, h in footprints:
        for _ in range(tries):
            x = int(rng.integers(_MARGIN, image_size - _MARGIN - w + 1))
            y = int(rng.integers(_MARGIN, image_size - _MARGIN - h + 1))
            if all(x >= px2 + _GAP or px >= x + w + _GAP or y >= py2 + _GAP or py >= y + h + _GAP
                   for px, py, px2, py2 in placed):
                placed.append((x, y, x + w, y + h))
                break
        else:
            return None
    return [(x, y) for x, y, _, _ in placed]
def _layout(rng: np.random.Generator, image_size: int,
            distractor_prob: float) -> tuple[list[tuple[str, str, str]], list[tuple[int, int]], list[tuple[int, int]]]:
    """A random scene's shapes (shape, colour, size), their footprints and their top-left corners;
    a footprint past the shapes is the distractor blob."""
    n_objects = int(rng.choice([2, 3, 4], p=[0.4, 0.35, 0.25]))
    pairs = rng.permutation(len(SHAPES) * len(COLORS))[:n_objects]
    colors = list(COLORS)
    kinds = [(SHAPES[p // len(COLORS)], colors[p % len(COLORS)], SIZES[int(rng.integers(2))]) for p in pairs]
    add_blob = rng.random() < distractor_prob
    while True:
        footprints = [_footprint(s, z, image_size, rng) for s, _, z in kinds]
        if add_blob:
            d = int(rng.integers(3, 6))
            footprints.append((d, d))
        corners = _place(footprints, image_size, rng)
        if corners is not None:
            return kinds, footprints, corners
        kinds = kinds[:-1] if len(kinds) > 2 else kinds  # crowded: drop a shape and retry


def render_scene(rng: np.random.Generator, image_size: int = 96,
                 distractor_prob: float = 0.2) -> tuple[np.ndarray, list[WorldObject]]:
    """A random scene: (HxWx3 uint8 image, its shapes). No two shapes share shape and colour.

    With probability ``distractor_prob`` a tiny blob that is no shape is added as well.
    """
    kinds, footprints, corners = _layout(rng, image_size, distractor_prob)
    return _paint(rng, image_size, footprints, corners, kinds)


def render_turned_pair(rng: np.random.Generator, image_size: int = 96, distractor_prob: float = 0.2
                       ) -> tuple[tuple[np.ndarray, list[WorldObject]], tuple[np.ndarray, list[WorldObject]]]:
    """A random scene and the same shapes placed as the scene turned half a turn about the image
    centre (the shapes themselves stay upright): every spatial relation between two of them is
    reversed, so a caption that states one is true of one image of the pair only. The half turn
    keeps the margins and gaps the world asks for."""
    kinds, footprints, corners = _layout(rng, image_size, distractor_prob)
    turned = [(image_size - x - w, image_size - y - h) for (w, h), (x, y) in zip(footprints, corners)]
    return _paint(rng, image_size, footprints, corners, kinds), _paint(rng, image_size, footprints, turned, kinds)


def _paint(rng: np.random.Generator, image_size: int, footprints: list[tuple[int, int]],
           corners: list[tuple[int, int]], kinds: list[tuple[str, str, str]]) -> tuple[np.ndarray, list[WorldObject]]:
    """Draw shapes ``kinds`` (shape, colour, size) with the given footprints and top-left corners
    on a light background; a footprint past ``kinds`` is the distractor blob."""
    colors = list(COLORS)
    # Light background: a tinted base colour, smooth low-frequency shading, pixel noise.
    base = rng.uniform(225, 248) + rng.uniform(-6, 6, 3)
    coarse = np.clip(np.rint(128 + rng.normal(0, 4, (6, 6, 3))), 0, 255).astype(np.uint8)
    shading = np.asarray(Image.fromarray(coarse).resize((image_size, image_size), Image.BILINEAR),
                         dtype=float)
    img = base + shading - 128
    objects = []
    for k, ((w, h), (x, y)) in enumerate(zip(footprints, corners)):
        if k < len(kinds):
            shape, color, size = kinds[k]
            # Mostly a brightness change, so that e.g. gray does not drift towards green.
            rgb = np.asarray(COLORS[color]) + rng.uniform(-15, 15) + rng.uniform(-6, 6, 3)
        else:  # the distractor blob
            shape, rgb = "circle", np.asarray(COLORS[colors[int(rng.integers(len(colors)))]], dtype=float)
        a = _alpha(shape, w, h)[..., None]
        img[y:y + h, x:x + w] = img[y:y + h, x:x + w] * (1 - a) + rgb * a
        if k < len(kinds):
            rows, cols = np.nonzero(a[..., 0] >= 0.5)
            box = (x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1)
            objects.append(WorldObject(shape, color, size, box))
    img += rng.normal(0, 2.5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects
def footprint(shape: str, size: str, image_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) in pixels of a shape of that size class, as the world draws them."""
    return _footprint(shape, size, image_size, rng)
def render_placed(rng: np.random.Generator, kinds: list[tuple[str, str, str]], footprints: list[tuple[int, int]],
                  centres: list[tuple[float, float]],
                  image_size: int = 96) -> tuple[np.ndarray, list[WorldObject]] | None:
    """Shapes ``kinds`` (shape, colour, size) of the given footprints centred at ``centres`` (x, y
    pixels), drawn as ``render_scene`` draws them (no distractor); None when two come closer than
    the world lets them or one leaves the image's margin."""
    corners = [(int(round(cx - w / 2)), int(round(cy - h / 2))) for (w, h), (cx, cy) in zip(footprints, centres)]
    boxes = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, footprints)]
    if any(x1 < _MARGIN or y1 < _MARGIN or x2 > image_size - _MARGIN or y2 > image_size - _MARGIN
           for x1, y1, x2, y2 in boxes):
        return None
    for k, a in enumerate(boxes):
        for b in boxes[k + 1:]:
            if not (a[0] >= b[2] + _GAP or b[0] >= a[2] + _GAP or a[1] >= b[3] + _GAP or b[1] >= a[3] + _GAP):
                return None
    return _paint(rng, image_size, footprints, corners, kinds)
def relation(a: WorldObject, b: WorldObject) -> tuple[str, float]:
    """Where ``a`` is relative to ``b`` along the dominant axis, and how clear that is (>= 1)."""
    dx = a.centre[0] - b.centre[0]
    dy = a.centre[1] - b.centre[1]
    clarity = (max(abs(dx), abs(dy)) + 1) / (min(abs(dx), abs(dy)) + 1)
    if abs(dy) >= abs(dx):
        return ("above" if dy < 0 else "below"), clarity
    return ("left" if dx < 0 else "right"), clarity
def _mention(obj: WorldObject, det: str, rng: np.random.Generator) -> list[str]:
    words = [det]
    if rng.random() < 0.9:  # the size is sometimes left out; the colour never is
        words.append(str(rng.choice(SIZE_WORDS[obj.size])))
    return words + [obj.color, obj.shape]
def _assemble(parts: list, objects: list[WorldObject], rng: np.random.Generator) -> Caption:
    """``parts``: strings of plain words and object indices, mentioned in that order."""
    words: list[str] = []
    mentions = []
    for part in parts:
        if isinstance(part, str):
            words += part.split()
        else:
            det = "a" if not mentions else str(rng.choice(["a", "the"]))
            phrase = _mention(objects[part], det, rng)
            mentions.append((len(words), len(words) + len(phrase), part))
            words += phrase
    words.append(".")
    words[0] = words[0].capitalize()
    return Caption(words, mentions)
def _relation_caption(objects: list[WorldObject], rng: np.random.Generator, directional: bool = False) -> Caption:
    pairs = [(i, j) for i in range(len(objects)) for j in range(i + 1, len(objects))]
    clear = [(i, j) for i, j in pairs if relation(objects[i], objects[j])[1] >= 1.5]
    i, j = (clear or pairs)[int(rng.integers(len(clear or pairs)))]
    rel, _ = relation(objects[i], objects[j])
    # Every wording of the fact "i rel j" and of its mirror "j opposite(rel) i".
    options = [(i, r, j) for r in RELATIONS[rel]] + [(j, r, i) for r in RELATIONS[_OPPOSITE[rel]]]
    a, b = objects[i].box, objects[j].box
    if rel in ("left", "right") and a[1] < b[3] and b[1] < a[3] and not directional:
        options += [(i, r, j) for r in SIDE_BY_SIDE] + [(j, r, i) for r in SIDE_BY_SIDE]
    subj, words, obj = options[int(rng.integers(len(options)))]
    frames = [frame for frame, excluded in _FRAMES if words not in excluded]
    frame = frames[int(rng.integers(len(frames)))]
    head, tail = frame.split("{B}")
    before_a, between = head.split("{A}")
    return _assemble([before_a, subj, between.replace("{R}", words), obj, tail], objects, rng)
def _listing_caption(objects: list[WorldObject], rng: np.random.Generator) -> Caption:
    order = [int(k) for k in rng.permutation(len(objects))]
    if rng.random() < 0.5:  # "three shapes: A, B and C" names them all
        parts: list = [f"{_NUMBERS[len(objects)]} shapes :"]
        for n, k in enumerate(order):
            if n:
                parts.append("and" if n == len(order) - 1 else ",")
            parts.append(k)
        return _assemble(parts, objects, rng)
    return _assemble(["an image with", order[0], "and", order[1]], objects, rng)
def _gist(caption: Caption) -> str:
    """The caption without articles and with one word per size: near-duplicates share it."""
    synonym = {w: size for size, words in SIZE_WORDS.items() for w in words}
    return " ".join(synonym.get(w, w) for w in map(str.lower, caption.words) if w not in ("a", "the"))
def make_captions(objects: list[WorldObject], rng: np.random.Generator, n: int = 5,
                  directional: bool = False) -> list[Caption]:
    """``n`` captions that differ in more than articles and size synonyms; about three in
    four of them tell a spatial relation. ``directional``: every one tells a relation with a
    direction ("above", "left of", not "next to"), for the scenes of a turned pair."""
    captions: dict[str, Caption] = {}
    for _ in range(50 * n):
        if directional or rng.random() < 0.75:
            cap = _relation_caption(objects, rng, directional)
        else:
            cap = _listing_caption(objects, rng)
        captions.setdefault(_gist(cap), cap)
        if len(captions) == n:
            break
    if len(captions) < n:
        raise RuntimeError(f"could not write {n} different captions for {objects}")
    return list(captions.values())


def world_scenes(seed: int, n_images: int, image_size: int, distractor_prob: float = 0.2, paired: int = 0):
    """The demo world's images in order, each (pixels, shapes, captions), from numpy generators
    seeded by ``seed``; the first ``paired`` images (an even number) are turned pairs, each with
    directional captions. The one source of a world's scenes: writing and replaying it agree."""
    scene_seed, caption_seed = np.random.SeedSequence(seed).spawn(2)
    scene_rng, caption_rng = np.random.default_rng(scene_seed), np.random.default_rng(caption_seed)
    pair = None
    for k in range(n_images):
        if k < paired and k % 2 == 0:
            pair = render_turned_pair(scene_rng, image_size, distractor_prob)
        img, objs = pair[k % 2] if k < paired else render_scene(scene_rng, image_size, distractor_prob)
        yield img, objs, make_captions(objs, caption_rng, directional=k < paired)
