"""The demo world's downstream tasks, written in the real formats.

From each scene's true objects and captions:

* ``vqa/v2_OpenEnded_demo_{split}_questions.json`` and ``vqa/v2_demo_{split}_annotations.json``
  (VQA v2): questions about colour, shape, existence, counting and spatial relations,
  each with ten human answers. Most humans agree; count answers are sometimes spelt out
  ("three" for "3") and now and then one human gives another answer, so answer
  normalisation and soft scores matter as they do on VQA v2;
* ``snli_ve/snli_ve_{train,dev,test}.jsonl`` (SNLI-VE): one hypothesis of each label per
  image. Entailed: a true existence or spatial fact; contradicted: an absent object or the
  reversed relation; neutral: a true object with a property no picture shows ("made of
  paper");
* ``flickr30k_entities/`` for the training images as well (the world writes the val and
  test images), so that phrase grounding can be fine-tuned.

The scenes are replayed from the world's seed when the world was written without these
files (rendering is deterministic), and the replay is checked against ``captions.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import ConfigError
from ..core.fileio import load_json
from ..formats.captions import read_captions
from ..formats.entities import write_flickr30k_entities
from ..formats.snli_ve import VEPair, write_snli_ve
from ..formats.vqa import write_vqa_annotations, write_vqa_questions
from .scenes import COLORS, SHAPES, relation, world_scenes

__all__ = ["prepare_demo_tasks", "replay_world", "ve_path", "vqa_paths", "write_demo_tasks"]

VE_SPLITS = {"train": "train", "val": "dev", "test": "test"}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
_NEUTRAL = ("is made of paper", "was drawn by a child", "is about to move", "is heavy", "is brand new",
            "belongs to someone")
_REL_WORDS = {"above": "above", "below": "below", "left": "left of", "right": "right of"}


def _absent_object(objects, rng) -> tuple[str, str]:
    """A (colour, shape) that no object of the scene has."""
    present = {(o.color, o.shape) for o in objects}
    while True:
        c, s = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if (c, s) not in present:
            return c, s


def vqa_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / f"v2_OpenEnded_demo_{split}_questions.json", root / f"v2_demo_{split}_annotations.json"


def ve_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"snli_ve_{split}.jsonl"


def _humans(answer: str, rng: np.random.Generator, spelt: str | None = None, others=()) -> list[str]:
    """Ten human answers: mostly ``answer``; sometimes a spelt-out number or one dissenter."""
    out = [answer] * 10
    if spelt is not None:
        for k in rng.choice(10, size=int(rng.integers(0, 4)), replace=False):
            out[k] = spelt
    if others and rng.random() < 0.3:
        out[int(rng.integers(10))] = str(rng.choice(list(others)))
    return out


def _questions(objects, rng: np.random.Generator, n: int) -> list[dict]:
    """Up to ``n`` questions of different kinds about one scene: question, answers, types."""
    shapes = [o.shape for o in objects]
    colors = [o.color for o in objects]
    kinds = []
    unique_shape = [o for o in objects if shapes.count(o.shape) == 1]
    if unique_shape:
        o = unique_shape[int(rng.integers(len(unique_shape)))]
        kinds.append(("what color is the", f"what color is the {o.shape}?", o.color, "other", None,
                      [c for c in COLORS if c != o.color]))
    unique_color = [o for o in objects if colors.count(o.color) == 1]
    if unique_color:
        o = unique_color[int(rng.integers(len(unique_color)))]
        kinds.append(("what shape is", f"what shape is the {o.color} object?", o.shape, "other", None,
                      [s for s in SHAPES if s != o.shape]))
    if rng.random() < 0.5:
        o = objects[int(rng.integers(len(objects)))]
        kinds.append(("is there a", f"is there a {o.color} {o.shape}?", "yes", "yes/no", None, ["no"]))
    else:
        c, s = _absent_object(objects, rng)
        kinds.append(("is there a", f"is there a {c} {s}?", "no", "yes/no", None, ["yes"]))
    kinds.append(("how many", "how many shapes are there?", str(len(objects)), "number",
                  _NUMBER_WORDS[len(objects)], ()))
    pairs = [(i, j) for i in range(len(objects)) for j in range(len(objects)) if i != j
             and shapes.count(objects[i].shape) == 1 and relation(objects[i], objects[j])[1] >= 1.5]
    if pairs:
        i, j = pairs[int(rng.integers(len(pairs)))]
        rel = relation(objects[i], objects[j])[0]
        b = objects[j]
        kinds.append(("what shape is", f"what shape is {_REL_WORDS[rel]} the {b.color} {b.shape}?",
                      objects[i].shape, "other", None, ()))
    order = rng.permutation(len(kinds))[:n]
    return [{"question_type": kinds[k][0], "question": kinds[k][1], "answers": _humans(kinds[k][2], rng, kinds[k][4],
                                                                                         kinds[k][5]),
             "multiple_choice_answer": kinds[k][2], "answer_type": kinds[k][3]} for k in sorted(order)]


def hypothesis_kind(hypothesis: str) -> str:
    """What a demo SNLI-VE hypothesis states: "existence" (there is ...), "relation" (one object
    where another is) or "property" (what no picture shows, the neutral ones)."""
    text = hypothesis.lower()
    if text.startswith("there is "):
        return "existence"
    return "relation" if any(f" is {w} " in text for w in _REL_WORDS.values()) else "property"


def _hypotheses(objects, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One (hypothesis, label) of each SNLI-VE label for one scene."""

    def name(o, det="a"):
        return f"{det} {o.color} {o.shape}"

    clear = [(i, j) for i in range(len(objects)) for j in range(len(objects))
             if i != j and relation(objects[i], objects[j])[1] >= 1.5]
    true_obj = objects[int(rng.integers(len(objects)))]
    if clear and rng.random() < 0.6:
        i, j = clear[int(rng.integers(len(clear)))]
        rel = relation(objects[i], objects[j])[0]
        entailed = f"{name(objects[i])} is {_REL_WORDS[rel]} {name(objects[j])}"
    else:
        entailed = f"there is {name(true_obj)}"
    if clear and rng.random() < 0.5:
        i, j = clear[int(rng.integers(len(clear)))]
        rel = relation(objects[i], objects[j])[0]
        wrong = {"above": "below", "below": "above", "left": "right", "right": "left"}[rel]
        contradicted = f"{name(objects[i])} is {_REL_WORDS[wrong]} {name(objects[j])}"
    else:
        c, s = _absent_object(objects, rng)
        contradicted = f"there is a {c} {s}"
    o = objects[int(rng.integers(len(objects)))]
    neutral = f"{name(o, 'the')} {rng.choice(_NEUTRAL)}"
    return [(h[0].upper() + h[1:] + ".", label) for h, label in
            ((entailed, "entailment"), (neutral, "neutral"), (contradicted, "contradiction"))]


def write_demo_tasks(out_dir: str | Path, ids: list[str], splits: list[str], objects: list, captions: list,
                     image_size: int, *, seed: int = 0, questions_per_image: int = 3) -> dict:
    """Write the VQA, SNLI-VE and (training-image) Flickr30k Entities files; return counts."""
    out = Path(out_dir)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    vqa: dict[str, list] = {s: [] for s in VE_SPLITS}
    ve: dict[str, list] = {s: [] for s in VE_SPLITS}
    for image_id, split, objs, caps in zip(ids, splits, objects, captions):
        number = int(image_id)
        for k, q in enumerate(_questions(objs, rng, questions_per_image)):
            vqa[split].append({"image_id": number, "question_id": number * 10 + k, **q})
        for k, (hyp, label) in enumerate(_hypotheses(objs, rng)):
            premise = caps[int(rng.integers(len(caps)))].raw
            ve[split].append(VEPair(image_id, hyp, label, premise, f"{image_id}.jpg#{k}"))
        if split == "train":
            write_flickr30k_entities(
                out / "flickr30k_entities", image_id,
                [(c.words, [(s, e, k + 1) for s, e, k in c.mentions]) for c in caps],
                boxes={str(k + 1): [list(o.box)] for k, o in enumerate(objs)}, width=image_size, height=image_size)
    for split, rows in vqa.items():
        q_path, a_path = vqa_paths(out / "vqa", split)
        write_vqa_questions(q_path, rows, data_subtype=f"demo_{split}")
        write_vqa_annotations(a_path, rows, data_subtype=f"demo_{split}")
        write_snli_ve(ve_path(out / "snli_ve", VE_SPLITS[split]), ve[split])
    return {"vqa_questions": {s: len(r) for s, r in vqa.items()}, "ve_pairs": {s: len(r) for s, r in ve.items()}}


def replay_world(data_dir: str | Path) -> tuple[list[str], list[str], list, list]:
    """(ids, splits, objects, captions) of a written world, re-rendered from its seed."""
    data_dir = Path(data_dir)
    world = load_json(data_dir / "world.json")
    counts = world["splits"]
    n_total = counts["train"] + counts["val"] + counts["test"]
    width = max(6, len(str(n_total - 1)))
    ids = [f"{i:0{width}d}" for i in range(n_total)]
    splits = ["train"] * counts["train"] + ["val"] * counts["val"] + ["test"] * counts["test"]
    objects, captions = [], []
    for _, objs, caps in world_scenes(world["seed"], n_total, world["image_size"], world.get("distractor_prob", 0.2),
                                      2 * world.get("turned_pairs", 0)):
        objects.append(objs)
        captions.append(caps)
    written = {}
    for r in read_captions(data_dir / "captions.json"):
        written.setdefault(r.image_id, []).append(r.caption)
    for image_id, caps in zip(ids, captions):
        if written.get(image_id, written.get(f"{image_id}.png")) not in (None, [c.raw for c in caps]):
            raise ConfigError(f"{data_dir}: re-rendering image {image_id} does not give its captions; "
                              "was the world written with other settings?")
    return ids, splits, objects, captions


def prepare_demo_tasks(data_dir: str | Path) -> dict:
    """Write the task files of an already written world (see the module docstring)."""
    data_dir = Path(data_dir)
    ids, splits, objects, captions = replay_world(data_dir)
    world = load_json(data_dir / "world.json")
    return write_demo_tasks(data_dir, ids, splits, objects, captions, world["image_size"], seed=world["seed"])
