"""The table of objectives computes what the recipe computed before it existed: for a fixed
model, batch and seeds the losses and their total are the values the hand-written recipe gave
(recorded below), for the paper's settings, the official code's and the per-sample average, on
the two-stream and the merged-attention model; and the masking follows the declarations."""

import numpy as np
import pytest
import torch

from mvptr.core.config import ObjectiveConfig, load_config
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.model.modeling import MVPTR
from mvptr.text.tokenizer import WordPieces, load_tokenizer
from mvptr.train.objectives import OBJECTIVES, stage_masking
from mvptr.train.recipes import pretraining_recipe

TAGS = ["circle", "square", "traffic light", "surfboard"]
ALL = ["mcr_v", "mcr_s", "vsc", "mlm", "itm", "wpg"]
OFFICIAL = ["objectives.wpg_variant=official", "objectives.mlm_separate_pass=false",
            "objectives.negative_sampling=hardest", "objectives.mcr_matching=aligned",
            "objectives.phrase_mask_tied=true"]
SAMPLE = ["objectives.itm_negatives=both", "objectives.loss_average=sample"]
MERGED = ["model.merged_attention=true", "objectives.vsc=false"]
# the hand-written recipe's losses (float32, CPU) on this batch, before the table of objectives
BEFORE = {
    "paper": ([], dict(total=16.501813888549805, mcr_s=1.9819679260253906, mcr_v=1.4473243951797485,
                       vsc=1.7918493747711182, itm=0.6932021975517273, mlm=10.401505470275879,
                       wpg=0.18596480786800385)),
    "merged_paper": (MERGED, dict(total=14.59259033203125, mcr_s=1.9102087020874023, mcr_v=1.4122546911239624,
                                  itm=0.6932928562164307, mlm=10.342138290405273, wpg=0.23469561338424683)),
    "official": (OFFICIAL, dict(total=16.461029052734375, mcr_s=1.9559024572372437, mcr_v=1.4473243951797485,
                                vsc=1.7918003797531128, itm=0.6932483315467834, mlm=10.401505470275879,
                                wpg=0.17124666273593903)),
    "sample": (SAMPLE, dict(total=16.463966369628906, mcr_s=1.9819679260253906, mcr_v=1.3836822509765625,
                            vsc=1.7918493747711182, itm=0.6974652409553528, mlm=10.423036575317383,
                            wpg=0.18596480786800385)),
    "merged_sample": (SAMPLE + MERGED, dict(total=14.584799766540527, mcr_s=1.9102087020874023,
                                            mcr_v=1.4111506938934326, itm=0.6869766712188721,
                                            mlm=10.341768264770508, wpg=0.23469561338424683)),
}
# float32 sums in another order (another thread count or CPU's kernels) move a loss by a few units
# in its last place, ~1e-7 relative each; 1e-5 allows ~100 of them and is still a thousand times
# smaller than the smallest term's share of the total (WPG: ~1e-2)
REL = 1e-5


def items():
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        n = 3 + i % 3
        words = [101, *rng.integers(1000, 30000, 5 + i).tolist(), 102]
        out.append({"input_ids": words, "phrases": [int(p) for p in rng.choice(7, 1 + i % 3, replace=False)],
                    "phrase_positions": [[1 + k] for k in range(1 + i % 3)],
                    "region_feats": rng.random((n, 134), dtype=np.float32),
                    "boxes": np.tile(np.array([[1, 2, 10, 12]], np.float32), (n, 1)),
                    "tags": [TAGS[(i + k) % 4] for k in range(2 + i % 2)], "width": 64, "height": 64,
                    "image_index": i // 2 * 2 if i < 4 else i})  # samples 0-1 and 2-3 share an image
    return out


def losses(overrides):
    cfg = load_config("tiny", overrides)
    obj, merged = cfg.objectives, cfg.model.merged_attention
    torch.manual_seed(0)
    model = MVPTR(cfg.model, 7, torch.tensor([[4418, 0], [2675, 0], [4026, 2422], [14175, 6277]])).train()
    settings = CollateSettings(cfg.model.tag_mode, masking=stage_masking(obj, ALL), separate_mlm=obj.mlm_separate_pass)
    batch = Collator(WordPieces(load_tokenizer(), 24), TAGS, 7, 30522, settings, torch.Generator().manual_seed(3))(
        items())
    recipe = pretraining_recipe("stage2", [o for o in ALL if not (merged and o == "vsc")], obj, merged)
    torch.manual_seed(11)  # dropout
    out = recipe.loss(model, batch, torch.Generator().manual_seed(5))
    total = sum(recipe.weights.get(k, 1.0) * v for k, v in out.items())
    return {"total": total.item(), **{k: v.item() for k, v in out.items()}}


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_the_losses_are_those_of_the_recipe_before_the_table(case):
    overrides, expected = BEFORE[case]
    got = losses(overrides)
    assert list(got) == list(expected)  # the same objectives, summed in the same order
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=REL), name


def test_the_masking_follows_the_declarations():
    obj = ObjectiveConfig()
    assert stage_masking(obj, ALL) == Masking(words=0.15, phrases=0.25, tags=0.25)
    assert stage_masking(obj, ["vsc", "itm"]) == Masking()
    assert stage_masking(ObjectiveConfig(use_tags=False), ALL).tags == 0.0  # MCR^v reads tags: off without them
    assert stage_masking(ObjectiveConfig(phrase_mask_tied=True), ["mcr_s"]).tie_phrases
    assert not stage_masking(ObjectiveConfig(phrase_mask_tied=True), ["mlm"]).tie_phrases
    masked = {o.masks for o in OBJECTIVES.values() if o.masks}
    assert masked == {"words", "phrases", "tags"}


def test_every_built_in_objective_has_a_switch_and_a_title():
    switches = {f for f in ObjectiveConfig.__dataclass_fields__
                if ObjectiveConfig.__dataclass_fields__[f].metadata.get("objective")}
    assert switches == set(ALL) <= set(OBJECTIVES)
    assert all(OBJECTIVES[name].title for name in ALL)
