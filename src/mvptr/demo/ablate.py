"""Table 4 of the paper with one command: each row pre-trained, evaluated and fine-tuned.

Every row of the paper's ablation table is a set of ``key=value`` overrides on one preset
(rows as data, below). For each row and seed, the workflow pre-trains both stages, evaluates
zero-shot retrieval (uni-modal and ITM re-ranked) and phrase grounding, then fine-tunes a copy
on the demo world's VQA and on phrase grounding. Every row runs with the same training seeds
(three by default), so each difference from the full model has a confidence interval and
counts only where it excludes zero (``ablation_report``). A finished run of a row is kept
(``result.json``) and reused when the command is run again, so an interrupted ablation resumes
where it stopped, and a table can be run in parts (``--rows``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ..checkpoint.model_dir import Bundle
from ..core.config import Config, save_config, to_dict
from ..core.errors import ConfigError
from ..core.fileio import write_json
from ..core.runtime import provenance
from ..tasks import load_config
from ..tasks.table import check_tasks
from ..workflows.evaluate import evaluate
from ..workflows.finetune import evaluate_task, finetune
from ..workflows.pretrain import initial_bundle, pretrain_stages
from ..workflows.probes import evaluate_probes
from .ablation_report import ablation_markdown, ablation_report, probe_figures
from .probe_set import build_probe_set
from .run import demo_task_files, final_itm_loss, prepare_data
from .tasks import prepare_demo_tasks


@dataclass(frozen=True)
class AblationRow:
    key: str
    inputs: str  # the paper's notation: w tokens, c phrases, r regions, t tags
    tasks: str
    overrides: tuple[str, ...]
    paper: dict  # Table 4's figures: COCO-5k RSUM and Uni-RSUM, VQA test-dev, Flickr30k grounding


ROWS = (
    AblationRow("full", "w, c, r, t", "MCR^{v,s}+VSC+WPG+MLM+ITM", (),
                dict(rsum=502.6, uni_rsum=471.9, vqa=76.16, grounding_zero_shot=42.55, grounding_finetuned=73.10)),
    AblationRow("no_mcr_v", "w, c, r, t", "MCR^s+VSC+WPG+MLM+ITM", ("objectives.mcr_v=false",),
                dict(rsum=498.1, uni_rsum=463.2, vqa=75.57, grounding_zero_shot=32.05, grounding_finetuned=72.86)),
    AblationRow("no_tags", "w, c, r", "MCR^s+VSC+WPG+MLM+ITM", ("objectives.mcr_v=false", "objectives.use_tags=false"),
                dict(rsum=494.8, uni_rsum=459.5, vqa=74.44, grounding_zero_shot=27.60, grounding_finetuned=71.98)),
    AblationRow("no_wpg_mcr_s", "w, c, r, t", "MCR^v+VSC+MLM+ITM", ("objectives.mcr_s=false", "objectives.wpg=false"),
                dict(rsum=498.3, uni_rsum=468.8, vqa=76.02, grounding_zero_shot=36.09, grounding_finetuned=72.65)),
    AblationRow("no_phrases", "w, r, t", "MCR^v+VSC+MLM+ITM",
                ("objectives.mcr_s=false", "objectives.wpg=false", "objectives.use_phrases=false"),
                dict(rsum=500.4, uni_rsum=470.9, vqa=75.98, grounding_zero_shot=35.04, grounding_finetuned=72.48)),
    # one encoder over {w, c, r, t} on the same two stages and settings: MCR^{v,s} in stage 1, the rest in stage 2
    AblationRow("merged_attention", "w, c, r, t", "MCR^{v,s}+WPG+MLM+ITM (MergAttn)",
                ("model.merged_attention=true", "objectives.vsc=false"),
                dict(rsum=496.5, uni_rsum=None, vqa=75.25, grounding_zero_shot=29.42, grounding_finetuned=72.24)),
)


def budget_overrides(cfg: Config, share: float) -> list[str]:
    """The preset's training budget times ``share``, as overrides: the steps (or epochs) of both
    pre-training stages and of the VQA and grounding fine-tuning, and the negative warm-up, so a
    shorter run keeps the preset's proportions. Overrides given after these take precedence."""
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"--budget {share}: the share of the preset's training budget must be in (0, 1]")
    cfg = check_tasks(cfg)  # the tasks' settings whole, their defaults included
    stages = {"stage1": cfg.stage1, "stage2": cfg.stage2, "finetune.vqa.train": cfg.finetune["vqa"].train,
              "finetune.grounding.train": cfg.finetune["grounding"].train}
    out = [f"{key}.max_steps={max(1, round(stage.max_steps * share))}" if stage.max_steps
           else f"{key}.epochs={stage.epochs * share:.6g}" for key, stage in stages.items()]
    return out + [f"{key}.negative_warmup_steps={round(stage.negative_warmup_steps * share)}"
                  for key, stage in (("stage1", cfg.stage1), ("stage2", cfg.stage2)) if stage.negative_warmup_steps]


def row_config(preset: str, overrides: list[str], row: AblationRow, seed_offset: int, out: Path) -> Config:
    base = load_config(preset, overrides)
    return load_config(preset, [*overrides, *row.overrides, f"seed={base.seed + seed_offset}", f"out_dir={out}"])


def finetune_on(cfg: Config, bundle: Bundle, task: str, out: Path, progress: bool) -> dict:
    model = Bundle(copy.deepcopy(bundle.model), bundle.tokenizer, bundle.phrase_vocab, bundle.tag_vocab)
    finetune(cfg, task, model, out, progress, overwrite=True)  # a row that did not finish fine-tunes anew
    return evaluate_task(cfg, task, model, out, progress)


def run_row(cfg: Config, progress: bool = True) -> dict:
    """Pre-train, evaluate zero-shot and fine-tune one configuration; the figures of one table cell."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    bundle = initial_bundle(cfg)
    pretrain_stages(cfg, bundle, out, resume=True, progress=progress)  # both stages, the merged model's too
    zero_shot = evaluate(cfg, bundle, progress)
    probes = evaluate_probes(cfg, bundle, build_probe_set(cfg, progress=progress))
    tasks = demo_task_files(cfg)
    vqa = tasks.finetune["vqa"]
    if not Path(vqa.questions.format(split=vqa.train_split)).exists():
        prepare_demo_tasks(cfg.demo.data_dir)
    vqa = finetune_on(tasks, bundle, "vqa", out / "finetune" / "vqa", progress)
    grounding = finetune_on(tasks, bundle, "grounding", out / "finetune" / "grounding", progress)
    retrieval = zero_shot["retrieval"]
    merged = cfg.model.merged_attention  # every pair scored by ITM: no uni-modal ranking
    return {
        "rsum": retrieval["itm" if merged else "rerank"]["rsum"],
        "uni_rsum": None if merged else retrieval["uni"]["rsum"],
        "vqa": vqa["acc"],
        "grounding_zero_shot": zero_shot["grounding"]["acc"],
        "grounding_finetuned": grounding["acc"],
        **probe_figures(probes),
        "itm_final_loss": final_itm_loss(out / "stage2" / "metrics.jsonl"),
        "eval_images": zero_shot["images"],
    }


def run_ablation(preset: str, overrides: list[str], out_dir: str | Path | None = None, seeds: int = 3,
                 rows: tuple[AblationRow, ...] = ROWS, progress: bool = True, *, budget: float = 1.0) -> dict:
    """Every row with the same ``seeds`` training seeds, each at ``budget`` times the preset's
    training budget; writes ``ablation.json`` and ``ablation.md`` (with the command, the commit
    and the machine) in ``out_dir`` (default ``<out_dir>/ablation``)."""
    cfg = load_config(preset, overrides)
    out = Path(out_dir or Path(cfg.out_dir) / "ablation")
    command = ["mvptr ablate --config", preset, f"--budget {budget:g}", *overrides]
    overrides = [*budget_overrides(cfg, budget), *overrides]
    prepare_data(cfg, {})
    results = {}
    for row in rows:
        runs = []
        for s in range(seeds):
            run_dir = out / row.key / f"seed{s}"
            done = run_dir / "result.json"
            row_cfg = row_config(preset, overrides, row, s, run_dir)
            if done.exists():
                check_finished_row(row_cfg, run_dir)
            else:
                write_json(done, run_row(row_cfg, progress))
            runs.append(json.loads(done.read_text()))
        results[row.key] = runs
    report = ablation_report(results, rows)
    report.update(command=" ".join(command), budget=budget, provenance=provenance(cfg.device))
    write_json(out / "ablation.json", report)
    (out / "ablation.md").write_text(ablation_markdown(report))
    return report


def check_finished_row(cfg: Config, run_dir: Path) -> None:
    """A finished row is reused only if it ran with the settings asked for now (another
    ``--budget`` or override would otherwise be reported under the new command). The row's
    counterpart of ``train.trainer.check_same_settings``, which guards a resumed stage: this
    one compares whole configs and points to ``--out``."""
    saved = _flat(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    differ = sorted(k for k, v in _flat(to_dict(cfg)).items()
                    if saved.get(k) != v)
    if differ:
        keys = ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
        raise ConfigError(f"{run_dir}: this row finished with other settings ({keys}); pass another --out, "
                          f"or remove {run_dir} to run it again")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def select_rows(keys: list[str], rows: tuple[AblationRow, ...] = ROWS) -> tuple[AblationRow, ...]:
    """The rows named in ``keys``, the full model always first (the others are read against it)."""
    known = {r.key: r for r in rows}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(f"unknown ablation rows {unknown} (known: {', '.join(known)})")
    return (rows[0], *(known[k] for k in keys if k != rows[0].key))
