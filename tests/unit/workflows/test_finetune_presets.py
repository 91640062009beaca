"""Fine-tuning follows appendix A.3 per task: input limits, dropout, learning rates, epochs,
weight decay and the paper's per-GPU batch sizes (as global batches on 8 GPUs)."""

import pytest

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.model.layers import Dropout
from mvptr.tasks import TASKS, load_config
from mvptr.text.phrases import PhraseVocab
from mvptr.workflows.finetune import task_setup

# task: (epochs, lr, batch per GPU, dropout, regions, tokens, tags, phrases) as appendix A.3 gives them
PAPER = {"retrieval": (5, 4e-5, 96, 0.1, 50, 50, 30, 5), "vqa": (25, 5e-5, 32, 0.3, 50, 128, 30, 0),
         "ve": (5, 4e-5, 64, 0.1, 70, 70, 20, 0)}


@pytest.mark.parametrize("task", sorted(PAPER))
def test_the_default_fine_tuning_settings_are_the_papers(task):
    epochs, lr, per_gpu, dropout, regions, tokens, tags, phrases = PAPER[task]
    t = TASKS[task].defaults()
    assert (t.train.epochs, t.train.lr, t.train.batch_size, t.train.weight_decay) == (epochs, lr, per_gpu * 8, 0.05)
    limits = (t.max_regions, t.max_tokens, t.max_tags, t.max_phrases)
    assert t.dropout == dropout and limits == (regions, tokens, tags, phrases)
    base = load_config("base").finetune[task]  # the base preset keeps them
    assert (base.train, base.dropout, base.max_regions, base.max_tokens, base.max_tags) == (
        t.train, t.dropout, t.max_regions, t.max_tokens, t.max_tags)


def test_base_fine_tunes_vqa_on_train_and_val_and_evaluates_on_test_dev():
    """A.3.2: "we fine-tune MVPTR on the training and validation sets", VQA v2's own file names."""
    vqa = load_config("base").finetune["vqa"]
    assert vqa.train_split == "train2014+val2014" and vqa.eval_split == "test-dev2015"
    assert vqa.questions.format(split="val2014").endswith("v2_OpenEnded_mscoco_val2014_questions.json")
    assert vqa.annotations.format(split="train2014").endswith("v2_mscoco_train2014_annotations.json")


def test_base_is_the_paper_in_its_phrase_threshold_and_loss_average():
    base, demo = load_config("base"), load_config("demo")
    assert base.data.phrase_min_count == 50 and demo.data.phrase_min_count == 5
    assert base.objectives.loss_average == "sample" and demo.objectives.loss_average == "token"


def test_a_task_runs_with_its_own_input_limits_and_dropout():
    overrides = ["finetune.vqa.max_tokens=128", "finetune.vqa.max_tags=30", "finetune.vqa.dropout=0.3"]
    cfg = load_config("tiny", overrides)
    bundle = new_bundle(cfg, PhraseVocab({"red circle": 2}, min_count=1), ["circle"])
    run, t = task_setup(cfg, "vqa", bundle)
    assert (run.data.max_tokens, run.data.max_tags, run.data.max_regions) == (128, 30, cfg.data.max_regions)
    assert run.model.dropout == bundle.model.cfg.dropout == 0.3
    drops = [(n.endswith("attention_dropout"), m.p) for n, m in bundle.model.named_modules() if isinstance(m, Dropout)]
    hidden, attention = {p for a, p in drops if not a}, {p for a, p in drops if a}
    assert hidden == {0.3} and attention == {cfg.model.attention_dropout}  # as the official --drop_out
    kept, _ = task_setup(load_config("tiny"), "vqa", bundle)  # tiny: the data section's limits
    assert kept.data == load_config("tiny").data
