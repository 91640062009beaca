"""``Batch`` documents every key a collated batch holds, each with a docstring of its own."""

import ast
import inspect

import numpy as np
import torch

from mvptr.data import batch as batch_module
from mvptr.data.batch import Batch
from mvptr.data.collate import CollateSettings, Collator, Masking
from mvptr.text.tokenizer import WordPieces, load_tokenizer


def documented_keys() -> dict[str, str]:
    """key -> the docstring written under it in ``Batch``'s body."""
    body = next(n for n in ast.parse(inspect.getsource(batch_module)).body
                if isinstance(n, ast.ClassDef) and n.name == "Batch").body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value
    return docs


def test_every_key_of_the_type_has_a_docstring():
    docs = documented_keys()
    assert set(docs) == set(Batch.__annotations__)
    assert all(len(text.split()) >= 3 for text in docs.values())


def test_a_collated_batch_holds_only_documented_keys():
    rng = np.random.default_rng(0)
    items = [{"input_ids": [101, 2417, 4418, 102], "phrases": [0], "phrase_positions": [[2]], "tags": ["circle"],
              "region_feats": rng.random((2, 8), dtype=np.float32), "boxes": np.ones((2, 4), np.float32),
              "width": 10, "height": 10, "image_index": i} for i in range(2)]
    for separate in (True, False):
        settings = CollateSettings(masking=Masking(words=0.5, phrases=0.5, tags=0.5), separate_mlm=separate)
        b = Collator(WordPieces(load_tokenizer(), 8), ["circle"], 2, 30522, settings, torch.Generator())(items)
        assert set(b) <= set(Batch.__annotations__), set(b) - set(Batch.__annotations__)
        assert ("mlm_input_ids" in b) == separate
