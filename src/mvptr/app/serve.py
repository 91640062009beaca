"""``mvptr serve --index DIR``: the search page and HTTP API (:mod:`.server`) under uvicorn.

    mvptr serve --index runs/demo/index --vqa-model runs/demo/finetune/vqa/model   # http://127.0.0.1:8000/

It listens on this machine only (127.0.0.1) unless ``--host`` says otherwise. The service
needs the ``serve`` extra (fastapi, uvicorn); without it the rest of mvptr still imports,
and :func:`load_service` says what to install.
"""

from __future__ import annotations

from .api import Model
from .search import SearchIndex, index_config

try:  # the serve extra: fastapi (with pydantic and starlette)
    from .server import create_app
except ModuleNotFoundError as err:
    if (err.name or "").split(".")[0] not in ("fastapi", "pydantic", "starlette"):
        raise
    create_app, MISSING = None, err.name
else:
    MISSING = None

__all__ = ["load_service"]


def load_service(index_dir: str, model_dir: str | None = None, vqa_model: str | None = None, nprobe: int | None = None):
    """The FastAPI app over the index at ``index_dir``."""
    if create_app is None:
        raise ModuleNotFoundError(f"No module named {MISSING!r}", name=MISSING)
    index = SearchIndex(index_dir, model_dir=model_dir, nprobe=nprobe)
    vqa = None
    if vqa_model:
        vqa = Model.load(vqa_model, index_config(index.meta))
        if getattr(getattr(vqa.model, "task_head", None), "answers", None) is None:
            raise ValueError(f"{vqa_model}: no VQA head (fine-tune one with `mvptr finetune vqa`)")
    return create_app(index, vqa)
