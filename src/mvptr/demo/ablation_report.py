"""Table 4's report: each cell as a mean with its 95% interval over training seeds, each row's
difference from the full model with its paired interval, and a verdict per difference.

A row's change counts, as the paper's direction or against it, only where the interval of its
difference from the full model excludes zero (`mvptr.eval.stats`); the rows run on the same
seeds, so the difference is taken seed by seed. With one seed a row has no interval and decides
nothing. A row whose stage-2 ITM did not learn (final loss above ``ITM_LEARNED`` on any seed) is
marked: its re-ranked RSUM then measures an untrained head.
"""

from __future__ import annotations

from ..eval.stats import mean_interval, paired_difference

METRICS = ("rsum", "uni_rsum", "vqa", "grounding_zero_shot", "grounding_finetuned",
           "probe_relation", "probe_attribute", "winoground_relation", "winoground_attribute")
LABELS = {
    "rsum": "RSUM (re-ranked)",
    "uni_rsum": "Uni-RSUM",
    "vqa": "VQA",
    "grounding_zero_shot": "grounding, pre-trained",
    "grounding_finetuned": "grounding, fine-tuned",
    "probe_relation": "relation swap",
    "probe_attribute": "attribute swap",
    "winoground_relation": "Winoground relation, group",
    "winoground_attribute": "Winoground attribute, group",
}
# the compositional probes (ITM, pre-trained; mvptr.demo.probes): the paper has no such figures,
# so a row's difference on them reads "higher" / "lower" / "undecided"
PROBES = {"probe_relation": ("relation_swap", None), "probe_attribute": ("attribute_swap", None),
          "winoground_relation": ("winoground_relation", "group"),
          "winoground_attribute": ("winoground_attribute", "group")}


def probe_figures(probes: dict) -> dict:
    """The probe columns of a row from ``evaluate_probes``'s result: ITM accuracy in percent."""
    return {m: probes["itm"][kind]["acc"] if part is None else probes["itm"][kind][part]["acc"]
            for m, (kind, part) in PROBES.items()}
ITM_LEARNED = 0.45  # the demo's bar on the ITM loss over the last tenth of stage 2 (chance: ln 2 = 0.693)


def cell(values: list) -> dict | None:
    """The mean of a metric over seeds with its interval (None where the row has no such figure);
    one seed gives the value without an interval."""
    if any(v is None for v in values):
        return None
    if len(values) == 1:
        return {"mean": float(values[0]), "half_width": None, "n": 1}
    return mean_interval(values)


def verdict(diff: dict | None, paper_row: float | None, paper_full: float | None) -> str:
    """"reproduces" / "reversed" when the interval of (row - full) excludes zero on the paper's side
    or the other; "undecided" when it holds zero; "higher" / "lower" for a figure the paper does
    not report; "n/a" without the figures to compare."""
    if diff is None:
        return "n/a"
    if diff["verdict"] == "undecided":
        return "undecided"
    if paper_row is None and paper_full is None:  # a figure the paper does not have
        return "higher" if diff["verdict"] == "a higher" else "lower"
    if paper_row is None or paper_full is None or paper_row == paper_full:
        return "n/a"
    return "reproduces" if (diff["verdict"] == "a higher") == (paper_row > paper_full) else "reversed"


def ablation_report(results: dict[str, list[dict]], rows) -> dict:
    """``results``: per row key, its runs in seed order (the same seeds for every row). Returns the
    table: each row's cells, its ITM check, its difference from the first row (the full model)
    and the verdicts."""
    full = results[rows[0].key]
    table = {}
    for row in rows:
        runs = results[row.key]
        itm = [r.get("itm_final_loss") for r in runs]
        entry = {"inputs": row.inputs, "tasks": row.tasks, "overrides": list(row.overrides), "seeds": runs,
                 "paper": row.paper, "ours": {m: cell([r[m] for r in runs]) for m in METRICS},
                 "itm_final_loss": itm, "itm_learned": all(v is not None and v <= ITM_LEARNED for v in itm)}
        if row is not rows[0]:
            n = min(len(runs), len(full))
            entry["difference"] = {
                m: paired_difference([r[m] for r in runs[:n]], [r[m] for r in full[:n]])
                if n >= 2 and all(r[m] is not None for r in runs[:n] + full[:n]) else None for m in METRICS}
            entry["verdict"] = {m: verdict(entry["difference"][m], row.paper.get(m), rows[0].paper.get(m))
                                for m in METRICS}
        table[row.key] = entry
    return {"rows": table, "eval_images": full[0]["eval_images"], "seeds": len(full)}


def _interval(d: dict | None, signed: bool = False) -> str:
    if d is None:
        return "NA"
    mean = f"{d['mean']:+.1f}" if signed else f"{d['mean']:.1f}"
    return mean if d["half_width"] is None else f"{mean} ± {d['half_width']:.1f}"


def ablation_markdown(report: dict) -> str:
    p = report.get("provenance", {})
    lines = [
        "# Table 4 on the demo world",
        "",
        f"`{report['command']}` ({report['budget']:g} of the preset's training budget, {report['seeds']} training "
        f"seeds per row), commit {p.get('commit', '?')}, {p.get('machine', '?')}. Zero-shot retrieval on "
        f"{report['eval_images']} test images (RSUM in percent points, re-ranked by ITM and uni-modal); VQA is "
        "the demo world's VQA after fine-tuning; grounding is accuracy at IoU > 0.5 before and after "
        "fine-tuning. Each cell: mean ± half width of its 95% interval over the seeds (Student's t), then "
        "the paper's figure (COCO 5k after fine-tuning, VQA test-dev, Flickr30k Entities). The probes "
        "(mvptr evaluate probes: ITM accuracy in percent; chance 50, and 16.7 for a Winoground group) have "
        "no counterpart in the paper.",
        "",
        "| inputs | training tasks | ITM learned | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for row in report["rows"].values():
        itm = ", ".join("NA" if v is None else f"{v:.2f}" for v in row["itm_final_loss"])
        learned = f"{'yes' if row['itm_learned'] else 'NO'} ({itm})"
        values = [_interval(row["ours"][m]) + ("" if m in PROBES else
                                                f" / {'NA' if row['paper'][m] is None else row['paper'][m]}")
                  for m in METRICS]
        lines.append(f"| {row['inputs']} | {row['tasks']} | {learned} | " + " | ".join(values) + " |")
    lines += [
        "",
        "Each row against the full model: the mean difference over seeds ± half width of its 95% interval, "
        "and whether it reproduces the paper's direction, reverses it, or cannot decide (the interval holds "
        "zero).",
        "",
        "| row | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for row in list(report["rows"].values())[1:]:
        lines.append(f"| {row['tasks']} ({row['inputs']}) | "
                     + " | ".join(f"{_interval(row['difference'][m], signed=True)} ({row['verdict'][m]})"
                                  for m in METRICS) + " |")
    return "\n".join(lines) + "\n"
