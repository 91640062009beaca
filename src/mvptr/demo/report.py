"""The demo's report: retrieval of each initialisation against chance, the downstream tasks,
and the time each step took, as JSON and Markdown."""

from __future__ import annotations

from ..tasks import TASKS

ORDER = ("pretrained", "minilm_init", "bert_init", "random_init", "chance")
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
def build_report(results: dict, seconds: dict, training: dict) -> dict:
    some = results.get("pretrained", next(iter(results.values())))
    chance = some["chance"]
    retrieval = {name: {kind: r["retrieval"][kind] for kind in ("uni", "rerank") if kind in r["retrieval"]}
                 for name, r in results.items()}
    retrieval["chance"] = {"uni": chance["retrieval"], "rerank": chance["retrieval"]}
    grounding = {name: {"acc": r["grounding"]["acc"]} for name, r in results.items()}
    grounding["chance"] = {"acc": chance["grounding"]}
    models = [m for m in ORDER if m in retrieval]
    return {
        "retrieval": {m: retrieval[m] for m in models},
        "grounding": {m: grounding[m] for m in models},
        "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
        "eval_set": {"images": some["images"], "captions": some["captions"],
                     "mentions": some["grounding"]["mentions"], "pairs_rescored": some["retrieval"]["pairs_scored"]},
        "training": {k: {"steps": v.steps, "samples_per_second": round(v.samples_per_second, 1), "last_losses": v.last,
                         "skipped_steps": v.skipped_steps, "precision": v.precision} for k, v in training.items()},
    }
def report_markdown(report: dict) -> str:
    ev = report["eval_set"]
    lines = [
        "# mvptr demo report",
        "",
        f"Zero-shot retrieval on the demo world's test split ({ev['images']} images, {ev['captions']} captions; "
        f"{ev['pairs_rescored']} pairs re-scored by ITM). Recall in percent. The models before pre-training "
        "rank uni-modally only: their ITM heads are untrained.",
        "",
        "| model | ranking | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for model, kinds in report["retrieval"].items():
        for kind, r in kinds.items():
            lines.append(f"| {model} | {kind} | " + " | ".join(f"{r[m]:.2f}" for m in METRICS) + " |")
    lines += [
        "",
        f"Zero-shot phrase grounding ({ev['mentions']} mentions, accuracy at IoU > 0.5, percent).",
        "",
        "| model | accuracy |",
        "|---|---|",
    ]
    lines += [f"| {m} | {g['acc']:.2f} |" for m, g in report["grounding"].items() if m in ORDER]
    if "itm" in report:
        itm = report["itm"]
        lines += ["", "Image-text matching of the pre-trained model: stage-2 ITM loss "
                  f"{itm['final_loss']:.3f} over the last tenth of its steps (ln 2 = 0.693 is chance); AUC of "
                  "each test image's first caption with its own image against a random other image "
                  f"{itm['auc_random']:.3f}, and against its {itm['hard_k']} most similar other images "
                  f"{itm['auc_hard']:.3f} ({itm['captions']} captions; 0.5 is chance)."]
    if "probes" in report:
        lines += probes_markdown(report["probes"])
    lines += downstream_markdown(report)
    for name, path in report.get("figures", {}).items():
        lines += ["", f"![{name}]({path})"]
    lines += ["", "Wall time (seconds).", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["seconds"].items()]
    lines += ["", "Training.", "", "| stage | steps | precision | samples/s | last losses |", "|---|---|---|---|---|"]
    lines += [
        f"| {k} | {v['steps']} | {v['precision']} | {v['samples_per_second']} | "
        + ", ".join(f"{n}={x:.3f}" for n, x in v["last_losses"].items()) + " |"
        for k, v in report["training"].items()
    ]
    return "\n".join(lines) + "\n"
def downstream_markdown(report: dict) -> list[str]:
    """One table of the fine-tuned tasks (percent) with the baselines each is read against: the
    rows each task of the table gives (``Task.report_rows``), in the table's order."""
    rows = [row for task in TASKS.values() for row in task.report_rows(report)]
    if not rows:
        return []
    lines = ["", "Fine-tuned on each task (percent; the test sets of the demo world are subsampled as configured).",
             "", "| task | metric | fine-tuned | baselines |", "|---|---|---|---|"]
    lines += [f"| {t} | {m} | {v if isinstance(v, str) else f'{v:.2f}'} | {b} |" for t, m, v, b in rows]
    return lines
def _share(r: dict | None) -> str:
    if r is None or r["acc"] is None:
        return "—"
    return f"{r['acc']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"
def probes_markdown(probes: dict) -> list[str]:
    """The compositional probes of the pre-trained model, by ITM and by the cosine of the global embeddings."""
    itm, cosine = probes["itm"], probes.get("cosine", {})
    lines = ["", "Compositional probes of the pre-trained model (percent, 95% Wilson interval; a tie counts as a "
             "failure): a true caption of a test image against its relation swapped, its two shapes' colours (or "
             "sizes) swapped and its words shuffled (ARO), and Winoground-style groups of two rendered images and "
             "two captions of the same words.", "", "| probe | score | ITM | cosine | n | chance |",
             "|---|---|---|---|---|---|"]
    for kind, r in itm.items():
        parts = [("", r, cosine.get(kind))] if "acc" in r else \
            [(part, p, cosine.get(kind, {}).get(part)) for part, p in r.items()]
        lines += [f"| {kind} | {part} | {_share(p)} | {_share(c)} | {p['n']} | {p['chance']:.2f} |"
                  for part, p, c in parts]
    return lines
