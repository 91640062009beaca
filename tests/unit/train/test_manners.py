"""A training call leaves the calling process as it found it: torch's settings and the allocator's."""

from __future__ import annotations

import pytest
import torch

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.core import runtime
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab
from mvptr.workflows.pretrain import pretrain_stage

pytestmark = pytest.mark.slow


class _Libc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_pretrain_stage_restores_threads_determinism_and_the_allocator(world_args, tmp_path, monkeypatch):
    libc = _Libc()
    monkeypatch.setattr(runtime, "_libc", lambda: libc)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    cfg = load_config("tiny", world_args(tmp_path) + ["stage1.max_steps=1", "threads=1", "deterministic=true"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    seen = {}
    real = runtime.configure_torch

    def spy(c):
        real(c)
        seen.update(threads=torch.get_num_threads(), deterministic=torch.are_deterministic_algorithms_enabled())

    monkeypatch.setattr(runtime, "configure_torch", spy)
    try:
        pretrain_stage(cfg, cfg.stage1, bundle, tmp_path, progress=False)
        assert seen == {"threads": 1, "deterministic": True}  # the run's while it trained
        assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (2, False)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    m_trim, m_mmap = runtime.M_TRIM_THRESHOLD, runtime.M_MMAP_THRESHOLD
    assert libc.calls[:2] == [(m_mmap, 2**30), (m_trim, 2**31 - 1)]  # set for the run ...
    assert sorted(libc.calls[2:]) == sorted([(m_trim, 128 * 1024), (m_mmap, 65536)])  # ... and set back


def test_the_main_objects_say_what_they_are(world_args, tmp_path):
    cfg = load_config("tiny", world_args(tmp_path))
    vocab = PhraseVocab.load(cfg.data.phrase_vocab)
    bundle = new_bundle(cfg, vocab, training_tag_vocab(cfg))
    assert repr(vocab).startswith(f"PhraseVocab({len(vocab)} phrases, min_count=")
    assert repr(bundle).startswith("Bundle(MVPTR, ") and f"{len(vocab)} phrases" in repr(bundle)
    assert len(repr(bundle)) < 300
