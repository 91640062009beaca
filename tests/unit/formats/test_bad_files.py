"""Files damaged after they were written: stale indexes, torn logs, NaN features, bad boxes."""

import base64
import json

import numpy as np
import pytest

from mvptr.core.errors import FormatError, SkippedSamples
from mvptr.core.fileio import append_json_lines, read_json_lines
from mvptr.formats.entities import read_flickr30k_annotation
from mvptr.formats.tsv import TSVFile, build_lineidx
from mvptr.formats.vinvl import VinVLFeatures, write_vinvl_features, write_vinvl_predictions
from mvptr.vision.store_convert import convert_vinvl_to_memmap
from mvptr.vision.stores import MemmapStore


def _rows(path, n=3, dim=4):
    write_vinvl_features(path, [(str(i), np.full((2, dim), i, dtype=np.float32)) for i in range(n)])


def test_an_index_left_from_a_shorter_file_is_named_as_such(tmp_path):
    path = tmp_path / "features.tsv"
    _rows(path)
    with open(path, "a") as f:  # rows appended after the index was built
        f.write(path.read_text().splitlines(keepends=True)[0].replace("0\t", "9\t", 1))
    with pytest.raises(FormatError, match=r"features\.lineidx does not match .*features\.tsv: it indexes 3 rows, "
                                          r"but the file goes on after them; rebuild it with .*build_lineidx") as err:
        VinVLFeatures(path)  # not "image 9 not found" later
    assert err.value.reason == "stale index"
    build_lineidx(path)
    assert "9" in VinVLFeatures(path)


def test_an_index_of_a_rewritten_file_is_refused(tmp_path):
    path = tmp_path / "features.tsv"
    _rows(path)
    path.write_text("0" + path.read_text())  # every row moved by one byte
    with pytest.raises(FormatError, match="row 3 does not start a line"):
        TSVFile(path)
    path.write_text("\n".join(path.read_text().splitlines()[:1]) + "\n")  # cut to one row
    with pytest.raises(FormatError, match="offsets do not rise from 0 within the file"):
        TSVFile(path)


def test_non_finite_features_are_refused_where_read_written_and_converted(tmp_path):
    x = np.ones((2, 4), dtype="<f4")
    x[1, 2] = np.inf
    path = tmp_path / "features.tsv"
    path.write_text(f"5\t2\t{base64.b64encode(x.tobytes()).decode()}\n"
                    f"6\t2\t{base64.b64encode(np.ones((2, 4), dtype='<f4').tobytes()).decode()}\n")
    build_lineidx(path)
    with pytest.raises(FormatError, match=r"features\.tsv line 1 \(image 5\): 1 feature values are NaN or inf "
                                          r"\(first: box 1, value 2\)") as err:
        VinVLFeatures(path)["5"]
    assert err.value.reason == "non-finite features"
    with pytest.raises(FormatError, match=r"out\.tsv \(image 5\): 1 feature values are NaN or inf"):
        write_vinvl_features(tmp_path / "out.tsv", [("5", x)])
    pred = {"image_h": 10, "image_w": 10, "objects": [{"rect": [1, 1, 2, 2], "class": "a"}] * 2}
    write_vinvl_predictions(tmp_path / "predictions.tsv", [("5", pred), ("6", pred)])
    with pytest.raises(FormatError, match="NaN or inf"):
        convert_vinvl_to_memmap(path, tmp_path / "predictions.tsv", tmp_path / "store", progress=False)
    skipped = SkippedSamples()
    convert_vinvl_to_memmap(path, tmp_path / "predictions.tsv", tmp_path / "store", progress=False, skip=skipped)
    assert MemmapStore(tmp_path / "store").ids() == ["6"] and len(skipped) == 1


def test_appending_after_a_torn_line_keeps_every_line_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')  # a full disk cut the second record
    append_json_lines(path, [{"step": 2}, {"step": 3}])
    assert [row for _, row in read_json_lines(path)] == [{"step": 1}, {"step": 2}, {"step": 3}]
    path.write_text('{"step": 1, "lo')  # nothing whole at all
    append_json_lines(path, [{"step": 1}])
    assert path.read_text() == '{"step": 1}\n'
    big = tmp_path / "big.jsonl"  # a torn tail longer than one read-back block
    big.write_text(json.dumps({"a": 1}) + "\n" + "x" * 200_000)
    append_json_lines(big, [{"b": 2}])
    assert big.read_text() == '{"a": 1}\n{"b": 2}\n'


@pytest.mark.parametrize("box", [(50, 10, 20, 40), (10, 40, 30, 20), (-3, 1, 5, 5)])
def test_entities_boxes_with_swapped_or_negative_corners(tmp_path, box):
    xml = tmp_path / "1.xml"
    xml.write_text("<annotation><size><width>100</width><height>80</height><depth>3</depth></size><object>"
                   "<name>5</name><bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(
                       ("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox></object></annotation>")
    with pytest.raises(FormatError, match=r"1\.xml \(object 0, entity 5\): box .* is not corners") as err:
        read_flickr30k_annotation(xml)
    assert err.value.reason == "bad box"
