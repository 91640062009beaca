"""Pre-training on a mix of corpora: one TSV pair and one memmap store, sharing image ids."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import DIM, VOCAB, captions_of, parsed, write_corpus
from mvptr.cli import main
from mvptr.core.config import CorpusConfig, DataConfig
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.data.pretrain import build_pair_dataset, caption_records, open_images, tag_vocab_from
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces, load_tokenizer
from mvptr.vision.store_convert import convert_vinvl_to_memmap
from mvptr.vision.stores import CorpusStores

A_IDS = [str(i) for i in range(1, 7)]  # 6 images, 12 captions, TSV
B_IDS = [str(i) for i in range(1, 5)]  # 4 images, 8 captions, memmap store; ids shared with A


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    a = write_corpus(root / "a", A_IDS, regions=3)
    b = write_corpus(root / "b", B_IDS, regions=5)  # 5 regions per image tells B's images apart
    convert_vinvl_to_memmap(b / "features.tsv", b / "predictions.tsv", b / "store", progress=False)
    return [CorpusConfig("coco", str(a / "captions.json"), str(a / "features.tsv"), str(a / "predictions.tsv"),
                         str(a / "phrase_cache.jsonl")),
            CorpusConfig("vg", str(b / "captions.json"), str(b / "store"), "", str(b / "phrase_cache.jsonl"))]


def _data(corpora, **kw):
    # the single-corpus fields point nowhere: with corpora they are not read
    return DataConfig(captions="missing.json", features="missing.tsv", corpora=corpora, max_regions=10, max_tags=8,
                      **kw)


def test_dataset_holds_both_corpora_with_namespaced_ids(corpora):
    ds = build_pair_dataset(_data(corpora), WordPieces(load_tokenizer(), 16), VOCAB, DIM, "train")
    assert ds.corpus_counts == {"coco": {"captions": 12, "images": 6}, "vg": {"captions": 8, "images": 4}}
    assert len(ds) == 20 and len(ds.image_index) == 10
    assert isinstance(ds.images.store, CorpusStores)
    # the same id in two corpora is two images
    assert ds.images("coco/1")["region_feats"].shape == (3, DIM)
    assert ds.images("vg/1")["region_feats"].shape == (5, DIM)
    assert {r.image_id.split("/")[0] for r in ds.records} == {"coco", "vg"}
    assert all(ds[i]["phrases"] == [0] for i in range(len(ds)))
    assert "coco/1" in ds.images and "vg/6" not in ds.images and "1" not in ds.images


def test_a_shuffled_batch_mixes_the_corpora(corpora):
    pieces = WordPieces(load_tokenizer(), 16)
    ds = build_pair_dataset(_data(corpora), pieces, VOCAB, DIM, "train")
    images = open_images(_data(corpora), DIM)
    tags = tag_vocab_from(images, sorted(ds.image_index))
    collate = Collator(pieces, tags, len(VOCAB), 30522, CollateSettings(masking=Masking(words=0.15)),
                       generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=10, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    regions = batch["region_mask"].sum(1).tolist()
    assert set(regions) == {3, 5}  # coco images have 3 regions, vg images 5
    assert batch["region_feats"].shape == (10, 5, DIM)


def test_caption_records_and_single_corpus_fallback(corpora, tmp_path):
    assert len(caption_records(_data(corpora), "train")) == 20
    single = DataConfig(captions=corpora[0].captions, features=corpora[0].features,
                        predictions=corpora[0].predictions, phrase_cache=corpora[0].phrase_cache, max_regions=10)
    ds = build_pair_dataset(single, WordPieces(load_tokenizer(), 16), VOCAB, DIM, "train")
    assert ds.corpus_counts == {"data": {"captions": 12, "images": 6}} and "1" in ds.image_index


@pytest.mark.parametrize("names", [["a", "a"], ["a/b", "c"], ["", "c"]])
def test_corpus_names_must_be_distinct_and_plain(corpora, names):
    bad = [CorpusConfig(n, c.captions, c.features, c.predictions, c.phrase_cache) for n, c in zip(names, corpora)]
    with pytest.raises(ValueError, match="data.corpora"):
        build_pair_dataset(_data(bad), WordPieces(load_tokenizer(), 16), VOCAB, DIM, "train")


def test_pretrain_on_a_mix_from_a_config_file(corpora, tmp_path, capsys):
    VOCAB.save(tmp_path / "vocab.json")
    config = {"data": {"corpora": [{k: getattr(c, k) for k in ("name", "captions", "features", "predictions",
                                                                "phrase_cache")} for c in corpora],
                       "phrase_vocab": str(tmp_path / "vocab.json")}}
    import yaml

    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))
    args = ["pretrain", "--config", str(tmp_path / "mix.yaml"), "--stage", "stage1", f"out_dir={tmp_path / 'run'}",
            "init.source=random", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
            "model.text_layers=1", "model.visual_layers=1", "model.multimodal_layers=1", "model.wpg_layer=1",
            f"model.region_feat_dim={DIM}", "model.embed_dim=16", "stage1.batch_size=4", "stage1.max_steps=2",
            "data.max_regions=10"]
    assert main(args) == 0
    assert "stage1: 20 samples (coco 12 captions / 6 images, vg 8 captions / 4 images)" in capsys.readouterr().out
    data = json.loads((tmp_path / "run" / "stage1" / "data.json").read_text())
    assert data["corpora"] == {"coco": {"captions": 12, "images": 6}, "vg": {"captions": 8, "images": 4}}
    assert np.isfinite([json.loads(line)["loss"] for line in
                        (tmp_path / "run" / "stage1" / "metrics.jsonl").read_text().splitlines()]).all()


def test_one_phrase_vocabulary_over_the_mix(corpora, tmp_path, capsys):
    from mvptr.data.pretrain import mix_phrase_vocab
    from mvptr.formats.phrase_cache import write_phrase_cache

    # vg's captions also mention "blue square": found in 8 of 20 captions
    extra = tmp_path / "vg_cache.jsonl"
    extra.write_text(open(corpora[1].phrase_cache).read())
    write_phrase_cache(extra, [(c, parsed(c, [("square", "blue"), ("circle", "red")]))
                               for i in B_IDS for c in captions_of(i)])
    mix = [corpora[0], CorpusConfig("vg", corpora[1].captions, corpora[1].features, "", str(extra))]
    vocab, captions = mix_phrase_vocab(_data(mix), min_count=8)
    assert captions == 20 and [vocab.phrase(i) for i in range(len(vocab))] == ["red circle", "blue square"]
    assert len(mix_phrase_vocab(_data(mix), min_count=9)[0]) == 1
    import yaml

    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"data": {"corpora": [
        {k: getattr(c, k) for k in ("name", "captions", "features", "predictions", "phrase_cache")} for c in mix]}}))
    assert main(["prepare", "vocab", "--config", str(tmp_path / "mix.yaml"), "--min-count", "8",
                 "--out", str(tmp_path / "vocab.json")]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 2
    assert len(PhraseVocab.load(tmp_path / "vocab.json")) == 2


def test_vocab_over_the_mix_names_a_caption_without_phrases(corpora, tmp_path):
    from mvptr.core.errors import FormatError, SkippedSamples
    from mvptr.data.pretrain import mix_phrase_vocab

    lines = open(corpora[1].phrase_cache).read().splitlines(keepends=True)
    (tmp_path / "cache.jsonl").write_text("".join(lines[1:]))  # vg's first caption has no phrases
    mix = [corpora[0], CorpusConfig("vg", corpora[1].captions, corpora[1].features, "", str(tmp_path / "cache.jsonl"))]
    with pytest.raises(FormatError, match=r"cache\.jsonl: no phrases for image 1, sentence 0"):
        mix_phrase_vocab(_data(mix), min_count=1)
    skipped = SkippedSamples()
    assert mix_phrase_vocab(_data(mix), min_count=1, skip=skipped)[1] == 19
    assert skipped.summary()["by_reason"]["no phrases"]["samples"] == 1
