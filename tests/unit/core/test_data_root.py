"""``data.root``: a preset's data paths lie under it, so one override points a run at another
folder of the same layout; the configuration saved with a run records the paths it read."""

import yaml

from mvptr.core.config import load_config, save_config, to_dict


def paths_under(cfg, root: str) -> dict[str, str]:
    """Every string setting that starts with ``root`` (dotted key -> value)."""
    found = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, str) and (value == root or value.startswith(root + "/")):
                found[f"{prefix}{key}"] = value
    walk(to_dict(cfg), "")
    return found


def test_one_override_moves_every_data_path_of_the_demo_preset():
    before = paths_under(load_config("demo"), "data/demo")
    assert len(before) >= 11  # data files, entities, the world's folder, the task files
    moved = load_config("demo", ["data.root=/other/folder"])
    after = paths_under(moved, "/other/folder")
    assert set(after) == set(before)
    assert {k: v.replace("/other/folder", "data/demo", 1) for k, v in after.items()} == before
    assert not paths_under(moved, "data/demo")
    assert moved.data.captions == "/other/folder/captions.json"
    assert moved.demo.data_dir == "/other/folder"
    assert moved.finetune["vqa"]["questions"] == "/other/folder/vqa/v2_OpenEnded_demo_{split}_questions.json"


def test_a_path_set_by_itself_stays_whatever_the_order():
    for overrides in (["data.root=/x", "data.captions=/y/c.json"], ["data.captions=/y/c.json", "data.root=/x"]):
        cfg = load_config("tiny", overrides)
        assert cfg.data.captions == "/y/c.json", overrides
        assert cfg.data.features == "/x/features.tsv", overrides


def test_the_saved_config_records_resolved_paths(tmp_path):
    cfg = load_config("demo", ["data.root=/other/folder"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "${" not in text
    saved = yaml.safe_load(text)
    assert saved["data"]["root"] == "/other/folder"
    assert saved["data"]["phrase_vocab"] == "/other/folder/phrases/phrase_vocab.json"
    assert saved["eval"]["entities_dir"] == "/other/folder/flickr30k_entities"
    # read back, it is the same configuration (nothing left to resolve against another root)
    again = load_config(str(tmp_path / "config.yaml"), ["data.root=/elsewhere"])
    assert again.data.captions == "/other/folder/captions.json"


def test_base_reads_the_papers_layout_under_its_root():
    cfg = load_config("base", ["data.root=/corpora/coco"])
    assert cfg.data.features == "/corpora/coco/features.tsv"
    assert cfg.finetune["vqa"]["annotations"] == "/corpora/coco/vqa/v2_mscoco_{split}_annotations.json"
