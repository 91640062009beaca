"""Ground-truth tags: `mvptr prepare tags` from COCO instances, and data.tags replacing the
detector's tags (paper 3.1.2), with or without duplicates."""

import json

import pytest

from mvptr.cli import main
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError, FormatError
from mvptr.data.pretrain import build_pair_dataset, open_images, tag_vocab_from
from mvptr.formats.captions import read_captions
from mvptr.formats.tags import read_tag_file
from mvptr.text.phrases import PhraseVocab
from mvptr.text.tokenizer import WordPieces, load_tokenizer

INSTANCES = {
    "images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"},
               {"id": 7, "file_name": "000000000007.jpg"}],  # no annotation
    "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
    "annotations": [{"image_id": 391895, "category_id": 2}, {"image_id": 391895, "category_id": 1},
                    {"image_id": 391895, "category_id": 2}],
}


def test_prepare_tags_reads_coco_instances(tmp_path, capsys):
    src = tmp_path / "instances_val2014.json"
    src.write_text(json.dumps(INSTANCES))
    assert main(["prepare", "tags", "--instances", str(src), "--out", str(tmp_path / "tags.json")]) == 0
    assert read_tag_file(tmp_path / "tags.json") == {"391895": ["bicycle", "person", "bicycle"], "7": []}
    stem = tmp_path / "stem.json"
    assert main(["prepare", "tags", "--instances", str(src), "--out", str(stem), "--key", "stem"]) == 0
    assert set(read_tag_file(tmp_path / "stem.json")) == {"COCO_val2014_000000391895", "000000000007"}
    bad = dict(INSTANCES, annotations=[{"image_id": 391895, "category_id": 9}])
    src.write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["prepare", "tags", "--instances", str(src), "--out", str(tmp_path / "x.json")]) == 2
    assert "annotation 0: unknown image 391895 or category 9" in capsys.readouterr().err
    (tmp_path / "bad_tags.json").write_text(json.dumps({"1": ["dog", ""]}))
    with pytest.raises(FormatError, match="bad_tags.json: image 1"):
        read_tag_file(tmp_path / "bad_tags.json")


@pytest.fixture(scope="module")
def tag_file(world, tmp_path_factory):
    ids = sorted({r.image_id for r in read_captions(world / "captions.json")})
    path = tmp_path_factory.mktemp("tags") / "tags.json"
    path.write_text(json.dumps({i: ["zebra", "kite", "zebra"] for i in ids}))
    return path, ids


def test_ground_truth_tags_replace_the_detectors(world_args, tag_file, tmp_path):
    path, ids = tag_file
    data = load_config("tiny", [*world_args(tmp_path), f"data.tags={path}"]).data
    images = open_images(data, 134)
    assert images(ids[0])["tags"] == ["zebra", "kite", "zebra"]
    assert tag_vocab_from(images, ids) == ["kite", "zebra"]
    detector = open_images(load_config("tiny", world_args(tmp_path)).data, 134)
    assert detector(ids[0])["tags"] != images(ids[0])["tags"]
    deduped = open_images(load_config("tiny", [*world_args(tmp_path), f"data.tags={path}",
                                               "data.dedupe_tags=true"]).data, 134)
    assert deduped(ids[0])["tags"] == ["zebra", "kite"]
    assert len(open_images(load_config("tiny", [*world_args(tmp_path), f"data.tags={path}",
                                                "data.max_tags=2"]).data, 134)(ids[0])["tags"]) == 2


def test_detector_tags_can_be_deduplicated_too(world_args, tag_file, tmp_path):
    _, ids = tag_file
    plain = open_images(load_config("tiny", world_args(tmp_path)).data, 134)
    deduped = open_images(load_config("tiny", [*world_args(tmp_path), "data.dedupe_tags=true"]).data, 134)
    for i in ids:
        tags = plain.tags(i)
        assert deduped.tags(i) == list(dict.fromkeys(tags))
    assert any(len(set(plain.tags(i))) < len(plain.tags(i)) for i in ids)  # the world has repeated classes


def test_an_image_without_ground_truth_tags_is_an_error_when_the_data_set_is_built(world, world_args, tmp_path):
    ids = sorted({r.image_id for r in read_captions(world / "captions.json", ["train"])})
    path = tmp_path / "tags.json"
    path.write_text(json.dumps({i: ["zebra"] for i in ids[1:]}))
    data = load_config("tiny", [*world_args(tmp_path), f"data.tags={path}"]).data
    vocab = PhraseVocab.load(data.phrase_vocab)
    with pytest.raises(FormatError, match=f"no ground-truth tags for image {ids[0]}"):
        build_pair_dataset(data, WordPieces(load_tokenizer(), 24), vocab, 134, "train")
    corpora = load_config("tiny", [*world_args(tmp_path), f"data.tags={path}",
                                   f"data.corpora=[{{name: a, captions: {data.captions}, features: {data.features}, "
                                   f"predictions: {data.predictions}, phrase_cache: {data.phrase_cache}}}]"]).data
    with pytest.raises(ConfigError, match="data.tags is for a single corpus"):
        open_images(corpora, 134)
