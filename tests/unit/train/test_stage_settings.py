"""A stage's settings apply to that stage: the negative warm-up and the loss weights of stage 2
do not govern retrieval fine-tuning, and the keys they had before are errors naming the new ones."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mvptr.cli import main
from mvptr.core.errors import ConfigError
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.model import losses as L
from mvptr.model.modeling import MVPTR
from mvptr.tasks import load_config, task_recipe  # the tasks' sections resolved and checked as well
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces, load_tokenizer
from mvptr.train.recipes import pretraining_recipe
from mvptr.train.trainer import check_same_settings, run_settings


def tiny_batch(step: int) -> dict:
    pieces = WordPieces(load_tokenizer(), 16)
    rng = np.random.default_rng(0)
    caps = pieces.captions(["a big wave near a boat", "a red kite over the sea", "a dog on the grass"])
    items = [{"input_ids": c, "phrases": [0], "tags": ["circle"], "image_index": i,
              "region_feats": rng.standard_normal((2, 134)).astype(np.float32),
              "boxes": np.tile(np.array([0, 0, 10, 10], np.float32), (2, 1)), "width": 9.0, "height": 9.0}
             for i, c in enumerate(caps)]
    collate = Collator(pieces, ["circle"], 3, 30522, CollateSettings(masking=Masking()),
                       generator=torch.Generator().manual_seed(0))
    return {**collate(items), "step": step}


def negative_logits(recipe, monkeypatch) -> list[torch.Tensor]:
    """The logits each ITM negative draw of one step at step 0 is sampled from."""
    seen, real = [], L.sample_negatives

    def spy(logits, *args, **kwargs):
        seen.append(logits.detach().clone())
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(L, "sample_negatives", spy)
    torch.manual_seed(0)
    model = MVPTR(load_config("tiny").model, 1, torch.tensor([[4418, 0]])).eval()
    with torch.no_grad():
        recipe.loss(model, tiny_batch(step=0), torch.Generator().manual_seed(0))
    return seen


def test_the_demo_warm_up_governs_stage_2_but_not_retrieval_fine_tuning(monkeypatch):
    cfg = load_config("demo")
    assert cfg.stage2.negative_warmup_steps == 120 and cfg.finetune["retrieval"].train.negative_warmup_steps == 0
    s2 = cfg.stage2
    stage2 = pretraining_recipe("stage2", ["itm"], cfg.objectives, negative_warmup_steps=s2.negative_warmup_steps,
                                loss_weights=s2.loss_weights)
    # stage 2 at its step 0: uniform negatives (hardness 0); retrieval: the paper's hard ones (hardness 1)
    assert all(torch.count_nonzero(logits) == 0 for logits in negative_logits(stage2, monkeypatch))
    retrieval = task_recipe("retrieval", cfg)
    assert all(torch.count_nonzero(logits) > 0 for logits in negative_logits(retrieval, monkeypatch))


def test_loss_weights_are_the_stages():
    cfg = load_config("demo", ["finetune.retrieval.train.loss_weights.itm=2"])
    assert cfg.stage2.loss_weights == {"mlm": 0.01}
    assert task_recipe("retrieval", cfg).weights == {"itm": 2.0}  # not stage 2's MLM weight


@pytest.mark.parametrize("old,new", [("objectives.negative_warmup_steps=120", "stage2.negative_warmup_steps"),
                                     ("objectives.loss_weights.mlm=0.01", "stage2.loss_weights")])
def test_the_old_objectives_keys_are_errors_naming_their_new_place(old, new, tmp_path, capsys):
    with pytest.raises(ConfigError, match=new.replace(".", "[.]")):
        load_config("tiny", [old])
    key, value = old.split("=")
    section, name = key.split(".")[:2]
    preset = tmp_path / "old.yaml"
    preset.write_text(f"{section}:\n  {name}: {value if name != 'loss_weights' else '{mlm: 0.01}'}\n")
    with pytest.raises(ConfigError, match=f"{section}[.]{name} in {preset}.*{new.replace('.', '[.]')}"):
        load_config(str(preset))
    assert main(["pretrain", "--config", "tiny", old]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and new in err and "finetune.retrieval.train" in err


def test_a_task_that_does_not_train_with_negatives_refuses_a_warm_up():
    for override in ("finetune.vqa.train.negative_warmup_steps=10", "finetune.ve.train.loss_weights.itm=2"):
        with pytest.raises(ConfigError, match="pre-training stages and retrieval fine-tuning only"):
            load_config("tiny", [override])
    with pytest.raises(ConfigError, match="stage2.negative_warmup_steps = 10: needs objectives.negative_sampling"):
        load_config("tiny", ["stage2.negative_warmup_steps=10", "objectives.negative_sampling=hardest"])


def test_a_checkpoint_from_before_the_move_resumes_and_a_later_one_is_compared():
    now = {"lr": 1e-4, "cross_modal_lr_scale": 1.0, "negative_warmup_steps": 120, "loss_weights": {"mlm": 0.01}}
    check_same_settings("ckpt", {"lr": 1e-4}, now)  # recorded before: what it had is unknown
    with pytest.raises(ConfigError, match="negative_warmup_steps 0 -> 120"):
        check_same_settings("ckpt", {**now, "negative_warmup_steps": 0}, now)


def test_a_stage_2_state_resumed_as_stage_1_is_refused_naming_the_stage():
    """The state of one stage does not fit another's optimizer (other parameters train): the
    checkpoint records its stage and objectives, and a resume under another is one line."""
    cfg = load_config("tiny")
    bundle = SimpleNamespace(phrase_vocab=PhraseVocab({"red circle": 2}, min_count=1), tag_vocab=["circle"])
    saved = run_settings(cfg.stage2, 10, 0, 100, 1, bundle)
    with pytest.raises(ConfigError, match="stage 'stage2' -> 'stage1'; objectives"):
        check_same_settings("ckpt", saved, run_settings(cfg.stage1, 10, 0, 100, 1, bundle))
    check_same_settings("ckpt", saved, run_settings(cfg.stage2, 10, 0, 100, 1, bundle))
