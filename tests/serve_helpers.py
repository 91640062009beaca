"""Helpers of the `mvptr serve` tests: a tiny model directory, and an app under a live uvicorn
server on a free loopback port."""

import contextlib
import socket
import threading
import time
from pathlib import Path

from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import save_model_dir
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.text.phrases import PhraseVocab


def tiny_model(world_args, out: Path, seed: int = 0, answers=None) -> Path:
    cfg = load_config("tiny", [*world_args(out), f"seed={seed}"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    if answers is None:
        return save_model_dir(out / "model", bundle)
    from mvptr.checkpoint.task_dir import save_task_model
    from mvptr.tasks import TASKS

    TASKS["vqa"].attach_head(bundle, {"answers": answers})
    return save_task_model(out / "vqa", bundle, {"task": "vqa", "answers": answers})


@contextlib.contextmanager
def live(app, **config):
    """``app`` served by uvicorn on 127.0.0.1; yields the port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
