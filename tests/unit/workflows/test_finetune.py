"""Fine-tuning: heads, losses and metrics against naive references; the demo world's task
files; and every task through `mvptr finetune` / `mvptr evaluate` on a tiny world."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import load_model_dir, save_model_dir
from mvptr.checkpoint.task_dir import save_task_model
from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.data.builders import collator, training_tag_vocab
from mvptr.data.tasks import TaskCollator
from mvptr.demo.tasks import hypothesis_kind, prepare_demo_tasks, ve_path, vqa_paths
from mvptr.eval.grounding import evaluate_grounding
from mvptr.formats.captions import read_captions
from mvptr.formats.snli_ve import VE_LABELS, read_snli_ve
from mvptr.formats.vqa import read_vqa
from mvptr.model.heads import AnswerClassifier
from mvptr.model.losses import grounding_loss, mention_outputs, vqa_loss
from mvptr.tasks import TASKS, load_task_model
from mvptr.text.phrases import PhraseVocab
from mvptr.vision.regions import box_iou, ground_truth_box
from mvptr.workflows.finetune import classification_accuracy, evaluate_task

pytestmark = pytest.mark.slow


def tiny_cfg(world_args, out, *extra):
    return load_config("tiny", [*world_args(out), *extra])


@pytest.fixture(scope="module")
def task_world(world, tmp_path_factory):
    """A copy of the tiny world with its task files."""
    root = tmp_path_factory.mktemp("task_world") / "world"
    shutil.copytree(world, root)
    prepare_demo_tasks(root)
    return root


@pytest.fixture(scope="module")
def task_args(task_world):
    def args(out):
        w = task_world
        return [
            f"out_dir={out}", f"data.captions={w}/captions.json", f"data.features={w}/features.tsv",
            f"data.predictions={w}/predictions.tsv", f"data.phrase_cache={w}/phrases/phrase_cache.jsonl",
            f"data.phrase_vocab={w}/phrases/phrase_vocab.json", f"eval.entities_dir={w}/flickr30k_entities",
            f"finetune.vqa.questions={w}/vqa/v2_OpenEnded_demo_{{split}}_questions.json",
            f"finetune.vqa.annotations={w}/vqa/v2_demo_{{split}}_annotations.json",
            f"finetune.ve.hypotheses={w}/snli_ve/snli_ve_{{split}}.jsonl",
            "threads=2",
        ]
    return args


@pytest.fixture(scope="module")
def tiny_model(task_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_model")
    cfg = load_config("tiny", task_args(out))
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    return save_model_dir(out / "model", bundle), cfg


def test_answer_head_starts_as_the_mlm_head_averaged_over_each_answers_pieces(tiny_model):
    _, cfg = tiny_model
    bundle = load_task_model(tiny_model[0])
    model = bundle.model
    answers = ["yes", "rectangle", "2", "light blue"]
    TASKS["vqa"].attach_head(bundle, {"answers": answers})
    model = bundle.model  # now the VQA model (MVPTRForVQA)
    x = torch.randn(5, cfg.model.hidden_size)
    with torch.no_grad():
        mlm, head = model.mlm_logits(x), model.task_head(x)
    for a, answer in enumerate(answers):
        pieces = bundle.tokenizer(answer, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(head[:, a], mlm[:, pieces].mean(1), atol=1e-5, rtol=1e-5)
    head = AnswerClassifier(cfg.model, 2)
    assert not torch.equal(head.transform.dense.weight, model.mlm_head.transform.dense.weight)


def test_grounding_loss_and_mention_pooling_match_a_loop():
    g = torch.Generator().manual_seed(0)
    b, k, n, r, h = 3, 2, 6, 4, 8
    hidden = torch.randn(b, n + 3, h, generator=g)
    regions = torch.randn(b, r, h, generator=g)
    weights = torch.zeros(b, k, n)
    weights[0, 0, [1, 2]] = 0.5
    weights[0, 1, 4] = 1.0
    weights[1, 0, [1, 2, 3]] = 1 / 3
    weights[2, 0, 5] = 1.0
    mention_mask = weights.sum(-1) > 0
    region_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    iou = torch.rand(b, k, r, generator=g)
    phrase = mention_outputs(hidden, weights)
    errors = []
    for i in range(b):
        for m in range(k):
            if not mention_mask[i, m]:
                continue
            pos = torch.nonzero(weights[i, m]).flatten()
            p = hidden[i, pos].mean(0)
            torch.testing.assert_close(phrase[i, m], p, atol=1e-5, rtol=1e-5)
            for j in range(r):
                if region_mask[i, j]:
                    errors.append((F.cosine_similarity(p, regions[i, j], dim=0) - iou[i, m, j]) ** 2)
    loss = grounding_loss(phrase, regions, region_mask, iou, mention_mask)
    assert loss.item() == pytest.approx(torch.stack(errors).mean().item(), abs=1e-5)


def test_vqa_loss_and_classification_accuracy_match_loops():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g)
    naive = sum(-(t * np.log(1 / (1 + np.exp(-x))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-x))))
                for row_x, row_t in zip(logits.tolist(), targets.tolist()) for x, t in zip(row_x, row_t)) / 4
    assert vqa_loss(logits, targets).item() == pytest.approx(naive, rel=1e-5)
    pred = torch.randint(0, 3, (50,), generator=g)
    gold = torch.randint(0, 3, (50,), generator=g)
    acc = classification_accuracy(pred, gold, ("entailment", "neutral", "contradiction"))
    assert acc["acc"] == pytest.approx(round(100 * sum(p == q for p, q in zip(pred.tolist(), gold.tolist())) / 50, 2))
    for k, name in enumerate(("entailment", "neutral", "contradiction")):
        rows = [p for p, q in zip(pred.tolist(), gold.tolist()) if q == k]
        assert acc["per_label"][name] == pytest.approx(round(100 * rows.count(k) / len(rows), 2))
    with pytest.raises(ValueError, match="no examples"):
        classification_accuracy(pred[:0], gold[:0], ("entailment", "neutral", "contradiction"))


@torch.no_grad()
def test_grounding_accuracy_matches_one_sentence_at_a_time(tiny_model, task_args, tmp_path):
    from mvptr.workflows.finetune import grounding_dataset

    cfg = load_config("tiny", task_args(tmp_path))
    bundle = load_task_model(tiny_model[0])
    data = grounding_dataset(cfg, bundle, "test", 0)
    collate = collator(cfg, bundle)
    correct = total = 0
    for ex in data.examples:  # one example per forward pass, no padding
        item = {**ex, **data.images(ex["image_id"])}
        batch = collate([item])
        text = bundle.model.eval().encode_text(batch["input_ids"], batch["word_mask"], batch["phrase_ids"],
                                               batch["phrase_mask"])
        image = bundle.model.encode_image(batch["tag_pieces"], batch["tag_mask"], batch["region_feats"],
                                          batch["region_mask"])
        fused = bundle.model.fuse(text.hidden, text.mask, image.region_hidden, image.region_mask).hidden[0]
        regions = fused[text.hidden.shape[1]:]
        for pos, boxes in ex["mentions"]:
            total += 1
            if not len(regions):
                continue
            best = int(F.cosine_similarity(fused[pos].mean(0)[None], regions).argmax())
            correct += int(box_iou(item["boxes"][best : best + 1], ground_truth_box(boxes, "merged")).max() > 0.5)
    result = evaluate_grounding(bundle.model, data.examples, data.images, collate, batch_size=7)
    assert result["mentions"] == total
    assert result["acc"] == pytest.approx(round(100 * correct / total, 2))
    with pytest.raises(ValueError, match="no mentions to evaluate"):  # not 0 % nor 100 %
        evaluate_grounding(bundle.model, [], data.images, collate)


def test_collator_builds_iou_targets_and_can_hide_every_region(tiny_model, task_args, tmp_path):
    from mvptr.workflows.finetune import grounding_dataset

    cfg = load_config("tiny", task_args(tmp_path))
    bundle = load_task_model(tiny_model[0])
    data = grounding_dataset(cfg, bundle, "train", 0)
    items = [data[i] for i in range(4)]
    batch = TaskCollator(collator(cfg, bundle))(items)
    for b, it in enumerate(items):
        for m, (pos, boxes) in enumerate(it["mentions"]):
            assert batch["mention_weights"][b, m, pos].sum().item() == pytest.approx(1.0)
            want = box_iou(it["boxes"], ground_truth_box(boxes, "merged")).max(1)
            assert batch["mention_iou"][b, m, : len(want)].numpy() == pytest.approx(want, abs=1e-6)
    hidden = TaskCollator(collator(cfg, bundle), mask_regions=True)(items)
    assert not hidden["region_mask"].any() and not hidden["tag_mask"].any()
    assert hidden["region_feats"].abs().sum() == 0


def test_demo_task_files_tell_the_truth_about_each_scene(task_world):
    captions = read_captions(task_world / "captions.json", splits=["test"])
    test_images = {r.image_id for r in captions}
    questions = read_vqa(*vqa_paths(task_world / "vqa", "test"))
    assert {f"{int(q.image_id):06d}" for q in questions} == test_images
    counted = [q for q in questions if q.question_type == "how many"]
    assert counted
    for q in counted:  # the true number of objects is the number of entities with boxes
        xml = ET.parse(task_world / "flickr30k_entities" / "Annotations" / f"{int(q.image_id):06d}.xml")
        assert q.multiple_choice_answer == str(len(xml.getroot().findall("object")))
        assert len(q.answers) == 10
    pairs = read_snli_ve(ve_path(task_world / "snli_ve", "test"))
    assert len(pairs) == 3 * len(test_images)
    assert {p.label for p in pairs} == {"entailment", "neutral", "contradiction"}
    train_images = {r.image_id for r in read_captions(task_world / "captions.json", splits=["train"])}
    assert all((task_world / "flickr30k_entities" / "Sentences" / f"{i}.txt").exists() for i in train_images)
    # each label's hypotheses are of the kinds the generator writes for it, and the demo tells them apart
    kinds = {label: {hypothesis_kind(p.hypothesis) for p in pairs if p.label == label} for label in VE_LABELS}
    assert kinds["neutral"] == {"property"}
    assert kinds["entailment"] <= {"existence", "relation"} and kinds["contradiction"] <= {"existence", "relation"}
    assert kinds["entailment"] | kinds["contradiction"] == {"existence", "relation"}


def test_ve_accuracy_per_group_adds_up_to_the_whole(tiny_model, task_args, tmp_path):
    model_dir, _ = tiny_model
    cfg = load_config("tiny", task_args(tmp_path))
    bundle = load_model_dir(model_dir)
    TASKS["ve"].attach_head(bundle, {})
    result = evaluate_task(cfg, "ve", bundle, progress=False, group_of=hypothesis_kind)
    groups = result["per_group"]
    assert set(groups) == {"existence", "relation", "property"}
    assert sum(g["pairs"] for g in groups.values()) == result["pairs"]
    correct = sum(g["acc"] * g["pairs"] for g in groups.values()) / 100
    assert correct == pytest.approx(result["acc"] * result["pairs"] / 100, abs=0.01 * len(groups))
    assert set(groups["property"]["per_label"]) == {"neutral"}  # a group reports only the labels it has


@pytest.mark.parametrize("task", ["vqa", "ve", "grounding", "retrieval"])
def test_each_task_fine_tunes_and_evaluates_from_the_command_line(task, tiny_model, task_args, tmp_path, capsys):
    model_dir, _ = tiny_model
    out = tmp_path / task
    args = task_args(tmp_path) + [f"finetune.{task}.train.max_steps=3", f"finetune.{task}.train.batch_size=8",
                                  f"finetune.{task}.train.lr=1e-3"]
    assert main(["finetune", task, "--model", str(model_dir), "--out", str(out), "--config", "tiny", *args]) == 0
    first = json.loads((out / f"eval_{task}.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3
    assert (out / "model" / "task.json").exists()
    # the saved directory evaluates to the same numbers
    assert main(["evaluate", task, "--model", str(out / "model"), "--config", "tiny", *args]) == 0
    again = json.loads((out / f"eval_{task}.json").read_text())
    assert again == first
    if task == "vqa":
        assert 0 <= first["acc"] <= 100 and 0 <= first["majority"] <= 100
        results = json.loads((out / "vqa_results_test.json").read_text())
        assert set(results[0]) == {"question_id", "answer"}
        assert len(results) == first["questions"]
        assert json.loads((out / "model" / "task.json").read_text())["answers"]
    elif task == "ve":
        assert 0 <= first["acc"] <= 100 and set(first["per_label"]) <= {"entailment", "neutral", "contradiction"}
        # rows without a gold label ("-") are counted where training and evaluation report
        assert first["unlabelled_pairs_left_out"] == 0
        assert json.loads((out / "model" / "task.json").read_text())["unlabelled_pairs_left_out"] == 0
    elif task == "grounding":
        assert 0 <= first["acc"] <= 100 and first["mentions"] > 0
    else:
        assert set(first) >= {"uni", "rerank", "pairs_scored"}
        scores = np.load(out / "retrieval_pair_scores.npz")
        assert len(scores["itm"]) == first["pairs_scored"] == len(scores["sim"])
        assert scores["positive"].any()


def test_fine_tuned_heads_survive_a_save_and_load(tiny_model, tmp_path):
    bundle = load_task_model(tiny_model[0])
    TASKS["ve"].attach_head(bundle, {})
    torch.nn.init.normal_(bundle.model.task_head.classifier.weight)
    path = save_task_model(tmp_path / "m", bundle, {"task": "ve"})
    again = load_task_model(path)
    for k, v in bundle.model.task_head.state_dict().items():
        assert torch.equal(v, again.model.task_head.state_dict()[k])
    assert "task_head" in dict(bundle.model.named_children())  # given back after saving


def test_easyvqa_becomes_vqa_v2_files_with_detected_regions(world, tmp_path):
    import easy_vqa

    from mvptr.demo.easyvqa import TEST_OFFSET, easyvqa_paths, prepare_easyvqa
    from mvptr.formats.vinvl import VinVLPredictions

    summary = prepare_easyvqa(tmp_path, world / "detector.safetensors", max_images=5)
    assert summary["splits"]["train"]["images"] == summary["splits"]["test"]["images"] == 5
    preds = VinVLPredictions(tmp_path / "predictions.tsv")
    for split in ("train", "test"):
        questions = read_vqa(*easyvqa_paths(tmp_path, split))
        assert len(questions) == summary["splits"][split]["questions"] > 0
        for q in questions:
            assert (int(q.image_id) >= TEST_OFFSET) == (split == "test")
            assert q.answers == [q.multiple_choice_answer] * 10
            assert q.multiple_choice_answer in easy_vqa.get_answers()
            assert len(preds[q.image_id]["objects"]) >= 1  # the one shape is found


def _torchrun(args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "-m", "mvptr", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_fine_tune_and_evaluate_like_one(tiny_model, task_args, tmp_path):
    model_dir, _ = tiny_model
    args = task_args(tmp_path) + ["threads=1", "finetune.ve.train.max_steps=2", "finetune.ve.train.batch_size=8",
                                  "finetune.vqa.train.max_steps=2", "finetune.vqa.train.batch_size=8"]
    # SNLI-VE fine-tuned by two processes; its sharded evaluation = a one-process evaluation
    out = tmp_path / "ve"
    _torchrun(["finetune", "ve", "--model", str(model_dir), "--out", str(out), "--config", "tiny", *args], tmp_path)
    sharded = json.loads((out / "eval_ve.json").read_text())
    assert main(["evaluate", "ve", "--model", str(out / "model"), "--config", "tiny", *args]) == 0
    assert json.loads((out / "eval_ve.json").read_text()) == sharded
    # VQA fine-tuned by one process, evaluated by two: same accuracy and the same results file
    out = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--model", str(model_dir), "--out", str(out), "--config", "tiny", *args]) == 0
    alone = json.loads((out / "eval_vqa.json").read_text())
    results = (out / "vqa_results_test.json").read_text()
    _torchrun(["evaluate", "vqa", "--model", str(out / "model"), "--config", "tiny", *args], tmp_path)
    assert json.loads((out / "eval_vqa.json").read_text()) == alone
    assert (out / "vqa_results_test.json").read_text() == results


def test_zero_shot_evaluation_without_entity_files_reports_no_grounding_number(tiny_model, task_args, tmp_path):
    from mvptr.workflows.evaluate import evaluate

    cfg = load_config("tiny", [*task_args(tmp_path), f"eval.entities_dir={tmp_path}/none", "eval.max_images=6"])
    result = evaluate(cfg, load_task_model(tiny_model[0]), progress=False)
    assert "acc" not in result["grounding"] and "no Flickr30k Entities" in result["grounding"]["skipped"]
    assert "grounding" not in result["chance"] and result["retrieval"]["uni"]["rsum"] < 600
