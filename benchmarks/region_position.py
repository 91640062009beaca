"""Is a region's position readable from what the model makes of it? A ridge regression from each
region's vector to its box centre (x, y), fitted on half of the test images' regions and scored
(R^2) on the other half, at four depths: the detector's appearance part alone (no box numbers),
the region embedding (Linear of features + box numbers), the visual encoder's input (after the
embedding LayerNorm) and the visual encoder's output, which is all the multimodal encoder sees
of a region. Relations ("above", "left of") can only be learned from what survives.

    python benchmarks/region_position.py --model runs/demo/stage2/model --config demo
    python benchmarks/region_position.py --init --config demo      # the initialised model, untrained
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import load_model_dir
from mvptr.core.config import load_config
from mvptr.data.builders import collator, image_source, training_tag_vocab
from mvptr.formats.captions import read_captions
from mvptr.text.phrases import PhraseVocab


def ridge_r2(feats: np.ndarray, target: np.ndarray, n_train: int, alpha: float = 10.0) -> list[float]:
    """R^2 per target column on rows n_train: of a ridge fit on rows :n_train (standardised inputs)."""
    xtr, xte, ytr, yte = feats[:n_train], feats[n_train:], target[:n_train], target[n_train:]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = np.linalg.solve(xtr.T @ xtr + alpha * np.eye(xtr.shape[1]), xtr.T @ (ytr - ytr.mean(0)))
    pred = xte @ w + ytr.mean(0)
    return [round(float(v), 3) for v in 1 - ((pred - yte) ** 2).sum(0) / ((yte - yte.mean(0)) ** 2).sum(0)]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory")
    ap.add_argument("--init", action="store_true", help="the model as initialised (init.source), untrained")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--images", type=int, default=300, help="test images")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    if args.init:
        bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    else:
        bundle = load_model_dir(args.model)
    model = bundle.model.eval()
    images = image_source(cfg)
    ids = sorted({r.image_id for r in read_captions(cfg.data.captions) if r.split == cfg.eval.split})[:args.images]
    batch = collator(cfg, bundle).image([images(i) for i in ids])
    feats, mask = batch["region_feats"], batch["region_mask"].numpy()
    box = feats[..., -6:].numpy()  # x1/w, y1/h, x2/w, y2/h, w, h
    centre = np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2], -1)[mask]
    n_train = int(mask[: len(ids) // 2].sum())  # the first half of the images' regions
    embedded = model.region_embed(feats)
    depths = {
        "appearance only": feats[..., :-6],
        "region embedding": embedded,
        "visual encoder input": model.embeddings(embedded, None, token_type=1),
        "visual encoder output": model.encode_image(batch["tag_pieces"], batch["tag_mask"], feats,
                                                    batch["region_mask"]).region_hidden,
    }
    result = {name: ridge_r2(torch.as_tensor(v).float().numpy()[mask], centre, n_train) for name, v in depths.items()}
    print(json.dumps({"model": "init" if args.init else args.model, "regions": int(mask.sum()),
                      "r2_x_y": result}, indent=1))


if __name__ == "__main__":
    main()
