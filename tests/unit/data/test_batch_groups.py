"""Batch groups: the k-th captions of a group's images are drawn into one batch."""

import json

import pytest

from mvptr.core.errors import FormatError
from mvptr.data.batch_groups import batch_units, load_batch_groups
from mvptr.formats.captions import CaptionRecord
from mvptr.train.step_batches import StepBatches


def _records(images, n=5):
    return [CaptionRecord(i, f"caption {k} of {i}", "train", k) for i in images for k in range(n)]


def test_units_pair_the_kth_captions_of_a_group_and_leave_the_rest_alone():
    records = _records(["a", "b", "c"], n=2)
    assert batch_units(records, [["a", "b"], ["other-split"]]) == [[0, 2], [1, 3], [4], [5]]


def test_units_cover_every_caption_once_when_images_have_different_numbers_of_captions():
    records = _records(["a"], n=3) + _records(["b"], n=1)
    units = batch_units(records, [["a", "b"]])
    assert sorted(i for u in units for i in u) == list(range(4))
    assert units[0] == [0, 3]


def test_the_sampler_keeps_a_units_indices_together_and_covers_the_epoch():
    records = _records([f"{i:03d}" for i in range(40)])
    units = batch_units(records, [[f"{i:03d}", f"{i + 1:03d}"] for i in range(0, 40, 2)])
    batches = [[i for _, _, i in b] for b in StepBatches(len(records), 20, seed=1, start=0, total=10, units=units)]
    assert sorted(i for b in batches for i in b) == list(range(200))
    partner = {u[0]: u[1] for u in units}
    # each caption meets its partner in its batch (units are 2 long and batches even: none is cut)
    for b in batches:
        assert all(partner[i] in b for i in b if i in partner)


def test_without_units_the_sampler_is_unchanged():
    plain = list(StepBatches(30, 10, seed=2, start=0, total=3))
    again = list(StepBatches(30, 10, seed=2, start=0, total=3, units=None))
    assert plain == again


@pytest.mark.parametrize("doc, words", [
    ([["a", "b"]], "expected"),
    ({"pairs": []}, "expected"),
    ({"groups": [["a", 3]]}, "group 0"),
    ({"groups": [["a", "b"], ["c", "a"]]}, "image a is in group 0 and in group 1"),
])
def test_a_bad_groups_file_names_the_file_and_the_entry(tmp_path, doc, words):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=str(path)) as err:
        load_batch_groups(str(path))
    assert words in str(err.value)
