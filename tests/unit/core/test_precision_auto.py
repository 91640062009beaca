""""auto" precision: bf16 where the device multiplies it natively, fp32 elsewhere, and a
run records which one it used."""

import pytest
import torch

from mvptr.core import precision
from mvptr.core.config import load_config
from mvptr.core.errors import ConfigError


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert precision.resolve("auto", "cpu") == expected
    with precision.autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") == native


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(name):
    assert precision.resolve(name, "cpu") == name


def test_the_probe_never_claims_bf16_for_an_unknown_device():
    assert precision.native_bf16("mps") is False
    assert isinstance(precision.native_bf16("cpu"), bool)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp8"):
        precision.resolve("fp8", "cpu")


def test_auto_is_a_valid_setting_and_fp8_is_not():
    cfg = load_config("tiny", ["stage1.precision=auto", "eval.precision=auto"])
    assert cfg.stage1.precision == cfg.eval.precision == "auto"
    with pytest.raises(ConfigError, match="stage1.precision"):
        load_config("tiny", ["stage1.precision=fp8"])
