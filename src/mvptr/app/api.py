"""Use a trained model from Python: encode images and texts, score pairs, ground phrases.

    from mvptr.app.api import Model

    model = Model.from_pretrained("runs/demo/stage2/model")  # or a Hugging Face Hub id: "org/name"
    images = model.images_from_store("data/demo/features.tsv", "data/demo/predictions.tsv", ["000000", "000001"])
    scores = model.score(images, ["a red circle left of a blue square"])  # (images, texts)
    model.ground(images[0], "a red circle left of a blue square")

Images are region sets: :class:`mvptr.vision.regions.Regions` from a detector (see
:meth:`Model.detect`), or the per-image dicts of a feature store. Texts are strings; their
phrase concepts are parsed with spaCy unless given (``phrases=``, scene-graph tuples or
phrase strings such as "big wave") or switched off
(``parse_phrases=False``). Inputs are cut to the limits the model was trained with
(``max_tokens``, ``max_phrases``, ``max_tags``, ``max_regions``; recorded in its directory, see
:mod:`mvptr.app.limits`). A model
fine-tuned for VQA (``mvptr finetune vqa``) also answers questions (:meth:`Model.answer`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint.hub import check_repo_id, resolve_model_dir, upload_model_dir
from ..checkpoint.model_card import CARD_FILE
from ..checkpoint.model_dir import Bundle, adopt_model_settings
from ..checkpoint.task_dir import save_bundle
from ..core.config import Config
from ..core.errors import ConfigError, FormatError, WrongTypeError
from ..core.fileio import write_text_atomic
from ..data.builders import collator
from ..eval.retrieval import EncodedSet, encode_images, encode_texts, itm_scores
from ..tasks import load_config, load_task_model
from ..text.phrases import PhraseExtractor
from ..text.tokenizer import WordPieces
from ..vision.regions import Regions
from ..vision.stores import open_store
from .limits import run_config

SCORES = ("uni", "itm", "both")
IMAGE_KEYS = ("region_feats", "boxes", "width", "height")
IMAGE_KINDS = "Regions (Model.detect) or a feature store's dict (Model.images_from_store)"


def check_text(text, what: str = "text") -> str:
    """``text`` if it is a string; a TypeError saying what was expected otherwise."""
    if not isinstance(text, str):
        raise WrongTypeError(f"{what}: expected a string, got {type(text).__name__} {text!r:.60}")
    return text


def check_texts(texts, what: str = "texts") -> list[str]:
    """A list of strings from a sequence of them; one string alone is refused (it is no list of texts)."""
    if isinstance(texts, (str, bytes, Mapping)) or not isinstance(texts, (Sequence, np.ndarray)):
        hint = " (wrap one text in a list: [text])" if isinstance(texts, str) else ""
        raise WrongTypeError(f"{what}: expected a list of strings, got {type(texts).__name__}{hint}")
    return [check_text(t, f"{what}[{i}]") for i, t in enumerate(texts)]


def check_image(image, what: str = "image"):
    """``image`` if it is a Regions or a feature store's dict with the keys an image needs."""
    if isinstance(image, Regions):
        return image
    if not isinstance(image, Mapping):
        raise WrongTypeError(f"{what}: expected {IMAGE_KINDS}, got {type(image).__name__}")
    missing = [k for k in IMAGE_KEYS if k not in image]
    if missing:
        raise ConfigError(f"{what}: a dict without {', '.join(missing)}; expected {IMAGE_KINDS}")
    return image


def check_images(images, what: str = "images") -> list:
    """A list of images from a sequence of them; one image alone is refused."""
    if isinstance(images, (Regions, Mapping, str, bytes)) or not isinstance(images, Sequence):
        hint = " (wrap one image in a list: [image])" if isinstance(images, (Regions, Mapping)) else ""
        raise WrongTypeError(f"{what}: expected a list of {IMAGE_KINDS}, got {type(images).__name__}{hint}")
    return [check_image(im, f"{what}[{i}]") for i, im in enumerate(images)]


def check_count(value, what: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise WrongTypeError(f"{what}: expected a whole number, got {type(value).__name__} {value!r:.40}")
    if value < least:
        raise ConfigError(f"{what}: expected at least {least}, got {value}")
    return int(value)


@dataclass
class Grounded:
    phrase: str  # the words of the caption that were grounded
    region: int  # index of the chosen region (-1: the image has no regions)
    box: list[float]  # its box, xyxy pixels (empty when there is none)
    similarity: float  # cosine of the phrase and region outputs of the multimodal encoder


def image_item(image, max_regions: int, max_tags: int) -> dict:
    """One image as the collator's input: the first ``max_regions`` regions and, as tags, the
    class names of the ``max_tags`` most confident detections (as in training)."""
    if isinstance(image, Regions):
        feats, boxes, classes = image.features, image.boxes, list(image.tags)
        confs, width, height = image.confs, image.image_w, image.image_h
    else:  # a feature store's dict
        feats, boxes, classes = image["region_feats"], image["boxes"], list(image.get("classes", image.get("tags", [])))
        confs, width, height = image.get("confs", np.ones(len(classes))), image["width"], image["height"]
    feats = np.asarray(feats, dtype=np.float32)
    feats = feats.reshape(len(feats), -1) if feats.size else feats.reshape(0, feats.shape[-1] if feats.ndim > 1 else 0)
    order = np.argsort(-np.asarray(confs, dtype=np.float32), kind="stable")[:max_tags]
    return {
        "region_feats": feats[:max_regions],
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[:max_regions],
        "tags": [classes[i] for i in order],
        "width": width,
        "height": height,
    }


def open_feature_store(features: str, predictions: str | None, feat_dim: int):
    """A memmap store directory, or a VinVL features.tsv with its predictions.tsv (``open_store``
    chooses the format and refuses a features.tsv without its predictions)."""
    return open_store(str(features), str(predictions or ""), feat_dim)


class Model:
    """A model directory ready for inference (eval mode, no gradients)."""

    def __init__(self, bundle: Bundle, cfg: Config | None = None, parse_phrases: bool = True,
                 batch_size: int = 64, *, limits: Mapping | None = None, source: str = "the model"):
        """``cfg``: a config whose input limits must agree with those ``bundle`` records;
        ``limits``: some of them overridden by name; ``source``: the model's name in messages."""
        if not isinstance(bundle, Bundle):
            raise WrongTypeError(f"bundle: expected a Bundle (load a model with Model.from_pretrained(path)), got "
                                 f"{type(bundle).__name__}")
        if cfg is not None and not isinstance(cfg, Config):
            raise WrongTypeError(f"cfg: expected a Config or None, got {type(cfg).__name__}")
        check_count(batch_size, "batch_size")
        self.bundle, self.model = bundle, bundle.model.eval()
        self.cfg = adopt_model_settings(run_config(bundle, cfg, limits, source), bundle)  # + its model and inputs
        self.device = next(self.model.parameters()).device.type
        self.parse_phrases, self.batch_size = parse_phrases, batch_size
        self.pieces = WordPieces(bundle.tokenizer, self.cfg.data.max_tokens)
        self._extractor = None
        # a fast tokenizer (and the phrase parser) is not thread-safe: model threads take turns at them
        self._text_lock = threading.RLock()
        self.directory: Path | None = None  # the directory it was loaded from (its model card)

        self.collate = collator(self.cfg, bundle)

    def __repr__(self) -> str:
        return (f"Model({type(self.model).__name__}, device={self.device!r}, batch_size={self.batch_size}, "
                f"parse_phrases={self.parse_phrases}, {len(self.bundle.phrase_vocab)} phrases)")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, config: str | Config | None = None, device: str = "cpu",
                        trust_pickle: bool = False, *, limits: Mapping | None = None, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, **kwargs) -> Model:
        """A model directory, or a Hugging Face Hub repo id ("org/name": downloaded into
        huggingface_hub's cache, or read from it under ``HF_HUB_OFFLINE=1`` or ``local_files_only``;
        ``revision``, ``cache_dir``, ``token`` as in ``snapshot_download``). A fine-tuned model
        comes with its task's head. Inputs are cut to the limits its directory records (those
        it was trained with): ``config`` (a preset, YAML or Config) must agree with them, and
        ``limits`` overrides some by name (``{"max_regions": 100}``). ``kwargs``:
        ``parse_phrases``, ``batch_size``."""
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise WrongTypeError(f"name_or_path: expected a model directory (str or Path) or a Hub repo id, got "
                                 f"{type(name_or_path).__name__}")
        if config is not None and not isinstance(config, (str, Config)):
            raise WrongTypeError(f"config: expected a preset name, a YAML path, a Config or None, got "
                                 f"{type(config).__name__}")
        check_text(device, "device")
        cfg = load_config(config) if isinstance(config, str) else config
        path = resolve_model_dir(name_or_path, revision, cache_dir, local_files_only, token)
        bundle = load_task_model(path, device, trust_pickle)  # fine-tuned: the encoders and the task's head
        model = cls(bundle, cfg, limits=limits, source=str(name_or_path), **kwargs)
        model.directory = path
        return model

    load = from_pretrained  # its earlier name

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model's directory at ``path`` (atomically): weights, config.json with the
        input limits it was trained with, tokenizer, vocabularies, a fine-tuned model's head and
        task.json, and the model card (README.md) of the directory it was loaded from."""
        if not isinstance(path, (str, os.PathLike)):
            raise WrongTypeError(f"path: expected a directory (str or Path), got {type(path).__name__}")
        card = self.directory / CARD_FILE if self.directory is not None else None
        # read before writing: path may be the directory the model came from
        text = card.read_text(encoding="utf-8") if card is not None and card.is_file() else None
        out = save_bundle(path, self.bundle)
        if text is not None and not self.bundle.card:  # the bundle noted nothing new since it was loaded
            write_text_atomic(out / CARD_FILE, text)
        return out

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | bool | None = None,
                    commit_message: str = "Upload mvptr model", revision: str | None = None) -> str:
        """Upload the model's directory (:meth:`save_pretrained`) to the Hugging Face Hub model
        repo ``repo_id`` ("org/name", created when missing); returns the commit's URL."""
        check_repo_id(repo_id)
        with tempfile.TemporaryDirectory(prefix="mvptr-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            return upload_model_dir(folder, repo_id, private, token, commit_message, revision)

    # ----- inputs ---------------------------------------------------------------------------
    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = PhraseExtractor()
        return self._extractor

    def phrases(self, texts: Sequence[str]) -> list[list[tuple[str, ...]]]:
        """Scene-graph tuples of each text (none when phrase parsing is off)."""
        texts = check_texts(texts)
        if not self.parse_phrases:
            return [[] for _ in texts]
        return [p.tuples for p in self.extractor.extract(texts, progress=False)]

    def images_from_store(self, features: str, predictions: str | None = None, image_ids: Sequence[str] | None = None):
        """Per-image dicts of a feature store (VinVL TSV pair or memmap directory); all images by default."""
        for what, value in (("features", features), ("predictions", predictions)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise WrongTypeError(f"{what}: expected a path (str or Path), got {type(value).__name__}")
        ids = None if image_ids is None else check_texts(image_ids, "image_ids")
        store = open_feature_store(str(features), predictions and str(predictions), self.model.cfg.region_feat_dim)
        return [store[i] for i in (store.ids() if ids is None else ids)]

    @staticmethod
    def detect(pixels: Sequence[np.ndarray], detector) -> list[Regions]:
        """Regions of raw HxWx3 uint8 images from a detector (e.g. ``DemoDetector.load(path)``)."""
        return detector.detect(list(pixels))

    def _batches(self, items: list[dict]):
        for start in range(0, len(items), self.batch_size):
            yield self.collate(items[start : start + self.batch_size])

    def _empty(self) -> EncodedSet:
        c = self.model.cfg
        return EncodedSet(torch.zeros(0, c.embed_dim), torch.zeros(0, 0, c.hidden_size),
                          torch.zeros(0, 0, dtype=torch.bool))

    def require_global_embeddings(self, what: str) -> None:
        if self.model.merged:
            raise ConfigError(f"{what} needs global embeddings, and the merged-attention model "
                              "(model.merged_attention) has none: it scores image-text pairs with ITM only "
                              "(score(..., mode='itm'))")

    # ----- encoders ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(
        self, texts: Sequence[str], phrases: Sequence[Sequence[Sequence[str]]] | None = None
    ) -> EncodedSet:
        """Global embeddings and token/phrase outputs of each text (the merged-attention
        model: the embedded texts, no global embeddings)."""
        texts = check_texts(texts)
        if phrases is not None and (isinstance(phrases, (str, Mapping)) or not isinstance(phrases, Sequence)):
            raise WrongTypeError("phrases: expected a list (one per text) of phrase lists, got "
                                 f"{type(phrases).__name__}")
        with self._text_lock:
            tuples = self.phrases(texts) if phrases is None else phrases
            pieces = self.pieces.captions(texts) if texts else []
        if len(tuples) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(tuples)} phrase lists")
        vocab, m = self.bundle.phrase_vocab, self.cfg.data.max_phrases
        if not texts:
            return self._empty()
        items = [{"input_ids": ids, "phrases": vocab.encode(t, m)}
                 for ids, t in zip(pieces, tuples)]
        return encode_texts(self.model, self._batches(items), self.device)

    def _image_items(self, images) -> list[dict]:
        d = self.cfg.data
        items = [image_item(im, d.max_regions, d.max_tags) for im in check_images(images)]
        want = self.model.cfg.region_feat_dim
        for i, it in enumerate(items):
            if it["region_feats"].shape[1] != want:
                raise FormatError(f"image {i}: region features are {it['region_feats'].shape[1]} wide, "
                                  f"the model takes {want}")
        return items

    @torch.no_grad()
    def encode_images(self, images) -> EncodedSet:
        """Global embeddings and region outputs of each image (the merged-attention model:
        the embedded regions and tags, no global embeddings)."""
        items = self._image_items(images)
        return encode_images(self.model, self._batches(items), self.device) if items else self._empty()

    # ----- scores -----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, images, texts, mode: str = "both") -> torch.Tensor:
        """(images, texts) scores: "uni" = cosine of the global embeddings, "itm" = log-odds of
        matching from the multimodal encoder, "both" = their sum (the merged-attention model:
        "itm" only). Images and texts may be given raw or already encoded."""
        if not isinstance(mode, str) or mode not in SCORES:
            raise ConfigError(f"unknown score {mode!r} (expected one of {', '.join(SCORES)})")
        if mode != "itm":
            self.require_global_embeddings(f"score(mode={mode!r})")
        v = images if isinstance(images, EncodedSet) else self.encode_images(images)
        t = texts if isinstance(texts, EncodedSet) else self.encode_texts(texts)
        if mode == "uni":
            return (v.emb @ t.emb.t()).float().cpu()
        pairs = torch.cartesian_prod(torch.arange(len(v.hidden)), torch.arange(len(t.hidden)))
        itm = itm_scores(self.model, t, v, pairs, self.batch_size, progress=False).view(len(v.hidden), len(t.hidden))
        return itm if mode == "itm" else itm + (v.emb @ t.emb.t()).float().cpu()

    # ----- question answering -----------------------------------------------------------------
    @torch.no_grad()
    def answer(self, image, question: str, top: int = 1) -> list[tuple[str, float]]:
        """The ``top`` answers of a VQA-fine-tuned model (``mvptr finetune vqa``) to a question
        about ``image``, with their probabilities (the head is trained with BCE on soft scores)."""
        check_image(image)
        check_text(question, "question")
        check_count(top, "top")
        head = getattr(self.model, "task_head", None)
        answers = getattr(head, "answers", None)
        if answers is None:
            raise ConfigError("this model has no VQA head; load a model fine-tuned with `mvptr finetune vqa`")
        # questions carry no phrase concepts, as in VQA fine-tuning
        with self._text_lock:
            text = {"input_ids": self.pieces.captions([question])[0], "phrases": []}
        batch = {k: v.to(self.device) for k, v in self.collate([{**text, **self._image_items([image])[0]}]).items()}
        _, fused = self.model.fuse_batch(batch)
        probs = head(self.model.pool(fused.hidden, fused.mask))[0].float().sigmoid().cpu()
        best = probs.topk(min(top, len(answers)))
        return [(answers[i], float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist())]

    # ----- grounding --------------------------------------------------------------------------
    def _spans(self, caption: str, phrases: Sequence[str] | None) -> list[tuple[int, int]]:
        if phrases is not None:
            spans = []
            for p in phrases:
                at = caption.find(p)
                if at < 0 and len(caption.lower()) == len(caption):  # then lower-case offsets are the same
                    at = caption.lower().find(p.lower())
                if at < 0:
                    raise ConfigError(f"phrase {p!r} is not in the caption {caption!r}")
                spans.append((at, at + len(p)))
            return spans
        if not self.parse_phrases:
            raise ConfigError("phrase parsing is off: give the phrases to ground")
        return [(c.start_char, c.end_char) for c in self.extractor.nlp(caption).noun_chunks]

    @torch.no_grad()
    def ground(self, image, caption: str, phrases: Sequence[str] | None = None) -> list[Grounded]:
        """The region each phrase of ``caption`` refers to: its noun phrases (parsed), or the
        given substrings. A phrase is the mean multimodal output of its word pieces, matched
        to the region output of highest cosine (paper 4.2.3)."""
        check_image(image)
        check_text(caption, "caption")
        if phrases is not None:
            phrases = check_texts(phrases, "phrases")
        with self._text_lock:
            enc = self.bundle.tokenizer(caption, truncation=True, max_length=self.cfg.data.max_tokens,
                                        return_offsets_mapping=True)
            spans = self._spans(caption, phrases)
            tuples = self.phrases([caption])[0]
        offsets = enc["offset_mapping"]
        mentions, names = [], []
        for start, end in spans:
            pos = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
            if pos:  # a phrase cut off by max_tokens is left out
                mentions.append(pos)
                names.append(caption[start:end])
        phrase_ids = self.bundle.phrase_vocab.encode(tuples, self.cfg.data.max_phrases)
        text = {"input_ids": enc["input_ids"], "phrases": phrase_ids}
        item = self._image_items([image])[0]
        batch = {k: v.to(self.device) for k, v in self.collate([{**text, **item}]).items()}
        _, fused = self.model.fuse_batch(batch)
        regions = F.normalize(fused.region_hidden[0].float(), dim=-1)
        fused = fused.hidden[0].float()
        out = []
        for name, pos in zip(names, mentions):
            if len(regions) == 0:
                out.append(Grounded(name, -1, [], float("nan")))
                continue
            sims = regions @ F.normalize(fused[pos].mean(0), dim=-1)
            best = int(sims.argmax())
            out.append(Grounded(name, best, [float(x) for x in item["boxes"][best]], float(sims[best])))
        return out
