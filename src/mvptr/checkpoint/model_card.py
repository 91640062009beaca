"""The model card (``README.md``) of a model directory, in the Hugging Face hub's format: YAML
front matter (``library_name``, ``tags``, ``license``, ``datasets`` and ``metrics`` where known),
then what trained the model (each run's corpora and samples, objectives and configuration), its
evaluation figures where the run produced them, the command that wrote it and what it must not
be used for.

A bundle carries what its runs noted (:func:`note_run`, :func:`note_evaluation`) in
``Bundle.card``; ``save_model_dir`` writes the card with the other files. The card describes
the model but does not define it: a search index's fingerprint of the directory leaves it out.
"""

from __future__ import annotations

import json
import shlex
import sys

import yaml

CARD_FILE = "README.md"


def note_run(card: dict, name: str, data: dict, objectives, config: dict, demo: bool) -> None:
    """Record a training run (a pre-training stage, a fine-tuning) in ``card``: ``data`` as in a
    stage's data.json (split, samples, corpora), the ``objectives`` it trained, its ``config``
    (the run's whole configuration), ``demo``: trained on the demo world."""
    card.setdefault("runs", []).append({"name": name, "data": data, "objectives": list(objectives)})
    card["config"] = config
    card["demo"] = card.get("demo", False) or demo


def note_evaluation(card: dict, task: str, figures: dict) -> None:
    card.setdefault("evaluation", {})[task] = figures


def _numbers(figures: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def front_matter(card: dict) -> dict:
    corpora = sorted({c for r in card.get("runs", []) for c in r["data"].get("corpora", {}) if c != "data"})
    meta = {"library_name": "mvptr", "license": "mit",
            "tags": ["mvptr", "vision-language", "image-text-retrieval", *(["demo-world"] if card.get("demo") else [])]}
    if corpora:
        meta["datasets"] = corpora
    metrics = sorted({k.split("/")[-1] for figures in card.get("evaluation", {}).values() for k in _numbers(figures)})
    if metrics:
        meta["metrics"] = metrics
    return meta


def _runs(card: dict) -> list[str]:
    lines = ["## Training", ""]
    if not card.get("runs"):
        return lines + ["Not recorded: this directory was written outside a pre-training or fine-tuning run.", ""]
    for run in card["runs"]:
        data = run["data"]
        corpora = ", ".join(f"{name} ({c.get('captions', '?')} captions, {c.get('images', '?')} images)"
                            for name, c in data.get("corpora", {}).items()) or "not recorded"
        lines += [f"### {run['name']}", "",
                  f"- data: {data.get('samples', '?')} samples of split `{data.get('split', '?')}`: {corpora}",
                  f"- objectives: {', '.join(run['objectives']) or 'none'}", ""]
    return lines


def model_card(card: dict, argv: list[str] | None = None) -> str:
    """The card's text; ``argv``: the command that wrote the directory (default ``sys.argv``)."""
    argv = sys.argv if argv is None else argv
    lines = ["---", yaml.safe_dump(front_matter(card), sort_keys=False).rstrip(), "---", "",
             "# MVPTR model", "",
             "A vision-language model of MVPTR (multi-level semantic alignment pre-training), written by mvptr.", ""]
    lines += _runs(card)
    lines += ["## Evaluation", ""]
    if card.get("evaluation"):
        for task, figures in card["evaluation"].items():
            lines += [f"### {task}", "", "```json", json.dumps(figures, indent=2), "```", ""]
    else:
        lines += ["No evaluation was run with the training that wrote this directory.", ""]
    lines += ["## Command", "", "```", shlex.join(argv), "```", ""]
    if card.get("config"):
        lines += ["## Configuration", "", "The run's whole configuration (its preset with the overrides applied):", "",
                  "```yaml", yaml.safe_dump(card["config"], sort_keys=False).rstrip(), "```", ""]
    lines += ["## Out of scope", "",
              *(["This model was trained on the demo world (synthetic images of shapes): it is for testing the "
                 "pipeline, not for real images.", ""] if card.get("demo") else []),
              "It has had no safety evaluation (bias, offensive content, privacy): do not use it to make decisions "
              "about people, for surveillance, or in any setting where its errors can cause harm.", ""]
    return "\n".join(lines)
