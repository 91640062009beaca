"""The end-to-end demo: prepare the demo world, parse phrases, pre-train both stages,
evaluate against un-pre-trained baselines and on the compositional probes, fine-tune on the downstream tasks (and on
easy-VQA, with a majority-answer and a question-only baseline), and write ``report.json`` /
``report.md``."""

from __future__ import annotations

import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..app.search import build_index
from ..checkpoint.bert_init import new_bundle
from ..checkpoint.model_dir import Bundle
from ..core.config import Config, save_config
from ..core.errors import ConfigError
from ..core.fileio import read_json_lines, write_json
from ..data.builders import training_tag_vocab
from ..tasks import TASKS
from ..tasks.table import check_tasks
from ..text.phrases import PhraseVocab, prepare_phrases
from ..viz.figures import make_demo_figures
from ..workflows.evaluate import evaluate, itm_separation_on
from ..workflows.finetune import evaluate_task, finetune
from ..workflows.pretrain import pretrain_stages
from ..workflows.probes import evaluate_probes
from .easyvqa import easyvqa_paths, prepare_easyvqa
from .probe_set import build_probe_set
from .report import build_report, report_markdown
from .tasks import hypothesis_kind, prepare_demo_tasks, ve_path, vqa_paths
from .world import generate_demo_world, turned_pair_count


@contextmanager
def timed(seconds: dict, name: str):
    t = time.time()
    yield
    seconds[name] = round(time.time() - t, 1)


def prepare_data(cfg: Config, seconds: dict) -> None:
    """The demo world, then its phrases. A new world's captions are parsed in a second process
    while the detector trains: both run on one core each (`DemoDetector` keeps torch to one
    thread, spaCy uses one), so together they take the time of the longer."""
    d = cfg.demo
    data_dir = Path(d.data_dir)
    phrases = partial(prepare_phrases, cfg.data.captions, Path(cfg.data.phrase_vocab).parent,
                      min_count=cfg.data.phrase_min_count, splits=(cfg.data.train_split,), n_process=d.n_process)
    new_world = not (data_dir / "predictions.tsv").exists()
    alongside = (new_world and d.n_process == 1 and not Path(cfg.data.phrase_vocab).exists()
                 and Path(cfg.data.captions).resolve() == (data_dir / "captions.json").resolve())
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        parsing = []

        def parse_alongside() -> None:
            print("phrases: parsing the captions in a second process while the detector trains", flush=True)
            parsing.append(pool.submit(phrases, progress=False))

        with timed(seconds, "prepare"):
            if new_world:
                generate_demo_world(data_dir, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test, seed=d.world_seed,
                                    image_size=d.image_size, turned_pairs=d.turned_pairs,
                                    on_captions=parse_alongside if alongside else None)
            check_world(data_dir, d)
        with timed(seconds, "phrases"):  # what is left of them once the world is made
            if parsing:
                parsing[0].result()
            elif not Path(cfg.data.phrase_vocab).exists():
                phrases()


def check_world(data_dir: Path, d) -> None:
    """A world on disk made with another seed, size or split sizes is not silently reused."""
    if not (data_dir / "world.json").exists():
        raise ConfigError(f"{data_dir}: has predictions.tsv but no world.json, so it is not a demo world "
                          f"`mvptr demo` made; set demo.data_dir to a new directory, or remove {data_dir}")
    made = json.loads((data_dir / "world.json").read_text(encoding="utf-8"))
    wanted = {"seed": d.world_seed, "image_size": d.image_size,
              "splits": {"train": d.n_train, "val": d.n_val, "test": d.n_test},
              "turned_pairs": turned_pair_count(d.turned_pairs, d.n_train)}
    made.setdefault("turned_pairs", 0)  # a world made before turned pairs existed has none
    differ = {k: (made.get(k), v) for k, v in wanted.items() if made.get(k) != v}
    if differ:
        changes = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in differ.items())
        raise ConfigError(f"{data_dir}/world.json: the demo world there was made with other settings ({changes}); "
                          f"set demo.data_dir to a new directory, or remove {data_dir} to make it again")


def final_itm_loss(metrics: Path, share: float = 0.1) -> float:
    """The mean ITM loss over the last ``share`` of a stage's logged steps."""
    itm = [row["itm"] for _, row in read_json_lines(metrics) if "itm" in row]
    if not itm:
        raise ConfigError(f"{metrics}: no ITM loss logged; the stage did not train ITM")
    last = itm[-max(1, round(share * len(itm))):]
    return round(sum(last) / len(last), 4)


def run_demo(cfg: Config, resume: bool = True) -> dict:
    if cfg.model.merged_attention:
        raise ConfigError("the demo reports the two-stream model (its uni-modal ranking, attention figure and "
                          "search index); pre-train the merged-attention variant "
                          "with `mvptr pretrain ... model.merged_attention=true objectives.vsc=false` and evaluate "
                          "it with `mvptr evaluate ... eval.max_images=N`")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    seconds: dict[str, float] = {}
    prepare_data(cfg, seconds)
    vocab = PhraseVocab.load(cfg.data.phrase_vocab)
    tags = training_tag_vocab(cfg)
    results = {}
    # baselines: the initialised model before pre-training, and a randomly initialised one
    baselines = {"random_init": "random"}
    if cfg.init.source != "random":
        name = "minilm_init" if cfg.init.source == "minilm" else "bert_init"
        baselines[name] = cfg.init.source
    # ranked uni-modally only: an untrained ITM head would re-rank each top k at random
    uni_only = replace(cfg, eval=replace(cfg.eval, k_c=0, k_i=0))
    for name, source in baselines.items():
        with timed(seconds, f"evaluate_{name}"):
            results[name] = evaluate(uni_only, new_bundle(cfg, vocab, tags, source))
    bundle = new_bundle(cfg, vocab, tags)
    start = [time.time()]

    def lap(name: str, *_) -> None:  # each stage's wall time, its data included
        seconds[name], start[0] = round(time.time() - start[0], 1), time.time()

    training = pretrain_stages(cfg, bundle, out, resume=resume, after=lap, overwrite=not resume)
    with timed(seconds, "evaluate_pretrained"):
        results["pretrained"] = evaluate(cfg, bundle)
    with timed(seconds, "itm"):
        itm = {"final_loss": final_itm_loss(out / "stage2" / "metrics.jsonl"), **itm_separation_on(cfg, bundle)}
    with timed(seconds, "probes"):  # relations and attribute bindings: mvptr.demo.probes
        probes = evaluate_probes(cfg, bundle, build_probe_set(cfg))
    with timed(seconds, "figures"):
        figures = make_demo_figures(cfg, bundle, out / "figures")
    with timed(seconds, "index"):  # what `mvptr serve --index runs/demo/index` serves
        build_index(out / "stage2" / "model", out / "index", cfg.data.features, cfg.data.predictions or None, cfg,
                    image_dir=str(Path(cfg.demo.data_dir) / "images"))
    downstream = run_downstream(cfg, bundle, out / "finetune", seconds)
    report = build_report(results, seconds, training)
    report["grounding"]["zero_shot"] = {"acc": results["pretrained"]["grounding"]["acc"]}
    report["grounding"]["finetuned"] = {"acc": downstream.pop("grounding")["acc"]}
    report["itm"] = itm
    report["probes"] = probes
    report.update(downstream)
    report["figures"] = {name: str(Path(path).relative_to(out)) for name, path in figures.items()}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(report_markdown(report))
    return report


def _copy(bundle: Bundle) -> Bundle:
    return Bundle(copy.deepcopy(bundle.model), bundle.tokenizer, bundle.phrase_vocab, bundle.tag_vocab,
                  dict(bundle.inputs), dict(bundle.limits), bundle.trained)


def demo_task_files(cfg: Config) -> Config:
    """``cfg`` with every task's settings resolved and the tasks the demo world has files for
    (``prepare_demo_tasks``, ``prepare_easyvqa``) reading them in ``demo.data_dir``."""
    cfg = check_tasks(cfg)
    d, f = Path(cfg.demo.data_dir), cfg.finetune
    vqa_q, vqa_a = vqa_paths(d / "vqa", "{split}")
    easy_q, easy_a = easyvqa_paths(d / "easyvqa", "{split}")
    return replace(cfg, finetune={
        **f,
        "vqa": replace(f["vqa"], questions=str(vqa_q), annotations=str(vqa_a)),
        "ve": replace(f["ve"], hypotheses=str(ve_path(d / "snli_ve", "{split}"))),
        "easyvqa": replace(f["easyvqa"], questions=str(easy_q), annotations=str(easy_a),
                           features=str(d / "easyvqa" / "features.tsv"),
                           predictions=str(d / "easyvqa" / "predictions.tsv")),
    })


def run_downstream(cfg: Config, bundle: Bundle, out: Path, seconds: dict, progress: bool = True) -> dict:
    """Fine-tune a copy of the pre-trained model on each task of the table and evaluate it; then
    easy-VQA with every region hidden (question only). The task files are written first when
    missing."""
    cfg = demo_task_files(cfg)
    f, data_dir = cfg.finetune, Path(cfg.demo.data_dir)
    with timed(seconds, "prepare_tasks"):
        if not Path(f["vqa"].questions.format(split=f["vqa"].train_split)).exists():
            prepare_demo_tasks(data_dir)
    with timed(seconds, "prepare_easyvqa"):
        if not Path(f["easyvqa"].questions.format(split=f["easyvqa"].train_split)).exists():
            prepare_easyvqa(data_dir / "easyvqa", data_dir / "detector.safetensors", cfg.demo.easyvqa_images)
    results = {}
    runs = [(task, task, cfg) for task in TASKS]
    text_only = replace(cfg, finetune={**f, "easyvqa": replace(f["easyvqa"], mask_regions=True)})
    runs.append(("easyvqa_question_only", "easyvqa", text_only))
    for name, task, task_cfg in runs:
        with timed(seconds, f"finetune_{name}"):
            model = _copy(bundle)
            # each demo fine-tunes the model it pre-trained anew: an earlier demo's task runs are replaced
            trained = finetune(task_cfg, task, model, out / name, progress, overwrite=True)
            by_kind = hypothesis_kind if task == "ve" else None  # a label can pass on one kind alone
            results[name] = {**evaluate_task(task_cfg, task, model, out / name, progress, group_of=by_kind),
                             "steps": trained.train.steps, "train_examples": trained.examples}
    easy = results.pop("easyvqa")
    question_only = results.pop("easyvqa_question_only")
    retrieval = results.pop("retrieval")
    return {
        **results,
        "retrieval_finetuned": {k: retrieval[k] for k in ("uni", "rerank", "steps", "train_examples")},
        "easyvqa": {"acc": easy["acc"], "majority": easy["majority"], "question_only": question_only["acc"],
                    "questions": easy["questions"], "steps": easy["steps"]},
    }
