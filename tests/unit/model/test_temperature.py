"""The learnable VSC temperature is used clamped at 0.01 (logit scale at most 100), as CLIP does."""

import math

import torch
import torch.nn.functional as F

from mvptr.core.config import load_config
from mvptr.model import losses as L
from mvptr.model.modeling import MVPTR


def embeddings(seed: int = 0, n: int = 4, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(image + 0.3 * torch.randn(n, d, generator=g), dim=-1)  # each caption nearest its image
    return image, text


def test_a_runaway_logit_scale_gives_logits_of_at_most_100_times_the_cosine():
    torch.manual_seed(0)
    model = MVPTR(load_config("tiny").model, 1, torch.tensor([[4418, 0]]))
    with torch.no_grad():
        model.logit_scale.fill_(20.0)  # exp(20): a temperature of 2e-9
    image, text = embeddings()
    cosine = image @ text.t()
    logits = L.vsc_logits(image, text, model.logit_scale)
    torch.testing.assert_close(logits, 100.0 * cosine)
    assert abs(model.temperature - 0.01) < 1e-9
    assert torch.isfinite(L.vsc_loss(image, text, model.logit_scale))


def test_optimizer_steps_that_push_the_scale_up_keep_it_at_most_100():
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0) - 0.05))
    optimizer = torch.optim.AdamW([logit_scale], lr=0.1, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    # near-duplicate images, each caption its own image: the loss falls as the scale rises
    image = F.normalize(torch.ones(4, 8) + 0.05 * torch.randn(4, 8, generator=g), dim=-1)
    text = image.clone()
    cosine = image @ text.t()
    for _ in range(10):
        optimizer.zero_grad()
        L.vsc_loss(image, text, logit_scale).backward()
        optimizer.step()
        effective = (L.vsc_logits(image, text, logit_scale).diag() / cosine.diag()).max().item()
        assert effective <= 100.0 * (1 + 1e-5)
    assert effective > 99.0  # the steps did push it to the bound
