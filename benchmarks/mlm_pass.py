"""MLM in a pass of its own (ALBEF style) against the official single masked pass, on the demo.

For each training seed, one stage-1 model is trained and shared; stage 2 then runs twice from
it, once per variant (`objectives.mlm_separate_pass=true|false`, every other setting the
preset's). Each stage-2 model is measured as `mvptr demo` measures it: the final ITM loss, ITM
AUC against a random and against the 10 most similar images, zero-shot RSUM (uni-modal and
re-ranked by ITM), and VQA after fine-tuning. Finished runs are kept (`result.json`) and
reused, so an interrupted measurement resumes.

    python benchmarks/mlm_pass.py --config demo --seeds 0 1 2 --out runs/mlm_pass

writes `results.json` and `results.md` in --out: each figure as mean ± 95% interval over the
seeds, and the paired difference (separate - single) with its interval.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from common import machine
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import Bundle
from mvptr.core.config import load_config, save_config
from mvptr.core.fileio import write_json
from mvptr.core.runtime import source_commit
from mvptr.data.builders import training_tag_vocab
from mvptr.demo.run import demo_task_files, final_itm_loss, prepare_data
from mvptr.demo.tasks import prepare_demo_tasks
from mvptr.eval.stats import format_interval, mean_interval, paired_difference
from mvptr.text.phrases import PhraseVocab
from mvptr.workflows.evaluate import evaluate, itm_separation_on
from mvptr.workflows.finetune import evaluate_task, finetune
from mvptr.workflows.pretrain import pretrain_stage

VARIANTS = {"separate": "true", "single": "false"}
METRICS = ("itm_final_loss", "auc_random", "auc_hard", "uni_rsum", "rerank_rsum", "vqa")


def measure(cfg, bundle: Bundle, out: Path) -> dict:
    stage2 = pretrain_stage(cfg, cfg.stage2, bundle, out / "stage2", resume=True, progress=False)
    zero_shot = evaluate(cfg, bundle, progress=False)
    itm = itm_separation_on(cfg, bundle)
    tasks = demo_task_files(cfg)
    vqa = tasks.finetune["vqa"]
    if not Path(vqa.questions.format(split=vqa.train_split)).exists():
        prepare_demo_tasks(cfg.demo.data_dir)
    model = Bundle(copy.deepcopy(bundle.model), bundle.tokenizer, bundle.phrase_vocab, bundle.tag_vocab)
    finetune(tasks, "vqa", model, out / "vqa", progress=False, overwrite=True)
    vqa = evaluate_task(tasks, "vqa", model, out / "vqa", progress=False)
    return {"itm_final_loss": final_itm_loss(out / "stage2" / "metrics.jsonl"),
            "auc_random": itm["auc_random"], "auc_hard": itm["auc_hard"],
            "uni_rsum": zero_shot["retrieval"]["uni"]["rsum"], "rerank_rsum": zero_shot["retrieval"]["rerank"]["rsum"],
            "vqa": vqa["acc"], "stage2_seconds": round(stage2.seconds, 1), "precision": stage2.precision}


def run_seed(preset: str, overrides: list[str], seed: int, out: Path) -> dict:
    base = [*overrides, f"seed={seed}"]
    cfg = load_config(preset, [*base, f"out_dir={out}"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    pretrain_stage(cfg, cfg.stage1, bundle, out / "stage1", resume=True, progress=False)
    runs = {}
    for name, flag in VARIANTS.items():
        run_dir = out / name
        done = run_dir / "result.json"
        if not done.exists():
            vcfg = load_config(preset, [*base, f"objectives.mlm_separate_pass={flag}", f"out_dir={run_dir}"])
            save_config(vcfg, run_dir / "config.yaml")
            t = time.time()
            result = measure(vcfg, Bundle(copy.deepcopy(bundle.model), bundle.tokenizer, bundle.phrase_vocab,
                                          bundle.tag_vocab), run_dir)
            write_json(done, {**result, "seconds": round(time.time() - t, 1)})
        runs[name] = json.loads(done.read_text())
        print(f"seed {seed} {name}: {runs[name]}", flush=True)
    return runs


def summary(runs: dict[int, dict]) -> dict:
    seeds = sorted(runs)
    out = {"seeds": seeds, "runs": {str(s): runs[s] for s in seeds}, "variants": {}, "difference": {}}
    for name in VARIANTS:
        out["variants"][name] = {m: mean_interval([runs[s][name][m] for s in seeds]) for m in METRICS}
    for m in METRICS:
        out["difference"][m] = paired_difference([runs[s]["separate"][m] for s in seeds],
                                                 [runs[s]["single"][m] for s in seeds])
    return out


def markdown(report: dict) -> str:
    lines = [f"# MLM pass: separate (ALBEF) against single (official), {len(report['seeds'])} seeds", "",
             f"`{report['command']}` at commit {report['commit']} on {report['machine']['cpu_model']}.", "",
             "| figure | separate pass | single pass | separate - single (95% interval) | verdict |",
             "|---|---|---|---|---|"]
    for m in METRICS:
        d = report["difference"][m]
        verdict = {"a higher": "separate higher", "b higher": "single higher"}.get(d["verdict"], "undecided")
        lines.append(f"| {m} | {format_interval(report['variants']['separate'][m], 3)} | "
                     f"{format_interval(report['variants']['single'][m], 3)} | {format_interval(d, 3)} | {verdict} |")
    lines += ["", "Per seed:", "", "| seed | variant | " + " | ".join(METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for s, runs in report["runs"].items():
        for name, r in runs.items():
            lines.append(f"| {s} | {name} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/mlm_pass")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    cfg = load_config(args.config, args.overrides)
    prepare_data(cfg, {})
    runs = {s: run_seed(args.config, args.overrides, s, out / f"seed{s}") for s in args.seeds}
    report = summary(runs)
    report.update(command=" ".join(["python benchmarks/mlm_pass.py --config", args.config, "--seeds",
                                    *map(str, args.seeds), *args.overrides]),
                  commit=source_commit(), machine=machine("cpu"))
    write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
