"""The README's picture of the search page (docs/serve.png): an index built in a temporary
directory, served by uvicorn on a free loopback port, searched with a sentence in the system's
Chromium (Playwright), the first result opened with its phrases grounded and a question asked.

    python scripts/screenshot_page.py                                    # the tiny world, untrained model
    python scripts/screenshot_page.py --model runs/demo/stage2/model --config demo --world data/demo \\
        --vqa-model runs/demo/finetune/vqa/model                         # a trained demo model

Without ``--model`` it builds what the tests use: a tiny demo world (128 images, its detector
trained one epoch) and an untrained model of the ``tiny`` config with a VQA head, so the
page shows how it looks, not what a trained model finds. Needs mvptr[serve], playwright and
Chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from mvptr.app.search import build_index
from mvptr.app.serve import load_service
from mvptr.checkpoint.bert_init import new_bundle
from mvptr.checkpoint.model_dir import save_model_dir
from mvptr.checkpoint.task_dir import save_task_model
from mvptr.core.config import load_config
from mvptr.data.builders import training_tag_vocab
from mvptr.demo.world import generate_demo_world
from mvptr.tasks import TASKS
from mvptr.text.phrases import PhraseVocab, prepare_phrases

QUERY = "a red circle left of a blue square"
QUESTION = "what color is the circle?"
ANSWERS = ["red", "blue", "green", "circle", "square", "two"]


def tiny_world(root: Path) -> tuple[Path, Path, Path]:
    """The tests' tiny demo world and an untrained ``tiny`` model of it, with and without a VQA
    head: (world, model, vqa model)."""
    world = root / "world"
    generate_demo_world(world, n_train=96, n_val=8, n_test=24, seed=0, detector_epochs=1, progress=False)
    prepare_phrases(world / "captions.json", world / "phrases", min_count=2)
    cfg = load_config("tiny", [
        f"out_dir={root / 'run'}", f"demo.data_dir={world}", "demo.n_train=96", "demo.n_val=8", "demo.n_test=24",
        f"data.captions={world}/captions.json", f"data.features={world}/features.tsv",
        f"data.predictions={world}/predictions.tsv", f"data.phrase_cache={world}/phrases/phrase_cache.jsonl",
        f"data.phrase_vocab={world}/phrases/phrase_vocab.json", "seed=0"])
    bundle = new_bundle(cfg, PhraseVocab.load(cfg.data.phrase_vocab), training_tag_vocab(cfg))
    model = save_model_dir(root / "model", bundle)
    TASKS["vqa"].attach_head(bundle, {"answers": ANSWERS})
    return world, model, save_task_model(root / "vqa", bundle, {"task": "vqa", "answers": ANSWERS})


@contextlib.contextmanager
def served(app):
    """``app`` under uvicorn on 127.0.0.1; yields its address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def shoot(url: str, out: Path, chromium: str, width: int, height: int) -> None:
    """Search, open the first result (its phrases grounded), ask a question, and take the picture."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url}/?q={QUERY.replace(' ', '+')}")
            page.wait_for_selector("#results .result img")
            page.wait_for_function("() => document.querySelector('#about').textContent.includes('images')")
            page.locator("#results .result .open").first.click()
            page.wait_for_selector("#boxes rect.box", state="attached")
            if page.locator("#ask").is_visible():
                page.fill("#question", QUESTION)
                page.press("#question", "Enter")
                page.wait_for_selector("#answers .answer")
            page.wait_for_function("() => Array.from(document.images).every((img) => img.complete)")
            page.mouse.move(0, 0)  # no hover outline in the picture
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/serve.png", help="the picture to write (default docs/serve.png)")
    ap.add_argument("--model", help="a trained model directory (default: an untrained tiny model)")
    ap.add_argument("--config", help="the preset or YAML --model was trained with")
    ap.add_argument("--world", help="with --model: its demo world (images/, detector.safetensors)")
    ap.add_argument("--vqa-model", help="with --model: a model fine-tuned with `mvptr finetune vqa`")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args(argv)
    if bool(args.model) != bool(args.world):
        ap.error("--model and --world go together (the images of the index and their detector)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        ap.error("no Chromium on this machine: apt-get install chromium (Debian/Ubuntu)")
    with tempfile.TemporaryDirectory(prefix="mvptr-screenshot-") as tmp:
        root = Path(tmp)
        if args.model:
            world, model, vqa, config = Path(args.world), args.model, args.vqa_model, args.config
        else:
            (world, model, vqa), config = tiny_world(root), "tiny"
        build_index(model, root / "index", config=config, images=str(world / "images"),
                    detector=str(world / "detector.safetensors"))
        with served(load_service(str(root / "index"), vqa_model=vqa and str(vqa))) as url:
            shoot(url, Path(args.out), chromium, args.width, args.height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
