"""A finished run directory back as a model: the student (eval mode), the exact eval preprocessing
of that run, and the class names, from the files the run wrote (local, copied to another machine,
or behind an fsspec URL). Weights load as tensors only (``weights_only``): a run directory someone
else wrote never runs code here.

    from featcache.train import load_student
    model, transform, classes = load_student("runs/demo/stl-42b9940ae4")
    logits, _ = model(transform.batch([image]))       # images: PIL in; text: transform.batch(["a text"])
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from featcache.plumbing import storage
from featcache.plumbing.errors import DataError
from featcache.plumbing.paths import resolve_path
from featcache.plumbing.weights import misfit, read_tensors
from featcache.rawdata.views import render_view

from .data import Inputs, load_tokenizer, tokens_to_model
from .students import StudentSpec, StudentWeightsError, build_student, is_text_student

TOKENIZER_DIR = "tokenizer"  # a text run's copy of its tokenizer.json, so the run directory travels whole


class RunNotFinished(DataError):
    """A run directory without results.json: the run stopped (or is still running) before its end."""


@dataclass(frozen=True)
class ImageTransform:
    """The run's eval view of an image: resized to size x size with its filter, then (x/255 - 0.5) / 0.5."""

    size: int
    resize_filter: str

    def pixels(self, image: Any) -> np.ndarray:
        """(size, size, 3) uint8: ``render_view`` of the eval view, as training read it."""
        return render_view(image.convert("RGB") if image.mode != "RGB" else image, None, self.size,
                           self.resize_filter)

    def batch(self, images: Sequence[Any]) -> torch.Tensor:
        """(B, 3, size, size) float: what the student's forward takes."""
        return Inputs.to_model(torch.from_numpy(np.stack([self.pixels(im) for im in images])))

    def __call__(self, image: Any) -> torch.Tensor:
        return self.batch([image])[0]

    def spec(self) -> dict[str, Any]:
        return {"kind": "image", "size": self.size, "resize_filter": self.resize_filter, "layout": "NCHW",
                "channels": "RGB", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3,
                "formula": "x = (pixel / 255 - mean) / std"}


@dataclass(frozen=True)
class TextTransform:
    """The run's tokenization: ids padded to max_length with the tokenizer's pad id, and the mask."""

    tokenizer: Any  # cache_tools.inputs.Tokenizer
    max_length: int

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L) long, mask (B, L) bool): what the student's forward takes."""
        return tokens_to_model(*self.tokenizer.encode(list(texts), self.max_length))

    def __call__(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.batch([text])
        return ids[0], mask[0]

    def spec(self) -> dict[str, Any]:
        return {"kind": "text", "max_length": self.max_length, "pad_id": int(self.tokenizer.pad_id),
                "vocab_size": int(self.tokenizer.vocab_size), "tokenizer_sha256": self.tokenizer.sha256,
                "inputs": "input_ids int64 (B, L) padded with pad_id; attention_mask (B, L), 1 on real tokens"}


class LoadedStudent(NamedTuple):
    model: nn.Module  # eval mode; forward(x) -> (logits, penultimate features)
    transform: ImageTransform | TextTransform
    classes: list[str]


@dataclass
class RunFiles:
    """A run directory's JSON documents, read once (local path or fsspec URL)."""

    path: str
    config: dict[str, Any]
    results: dict[str, Any]

    def read_bytes(self, name: str) -> bytes:
        fs, root = storage.filesystem(self.path)
        where = f"{root}/{name}"
        if not fs.exists(where):
            raise DataError(f"{self.path}/{name}: missing from the run directory")
        return fs.cat_file(where)

    def exists(self, name: str) -> bool:
        fs, root = storage.filesystem(self.path)
        return bool(fs.exists(f"{root}/{name}"))


def open_run(run_dir: str | os.PathLike) -> RunFiles:
    """config.json and results.json of a finished run; RunNotFinished (one line) without results.json."""
    path = os.fspath(run_dir).rstrip("/")
    fs, root = storage.filesystem(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"{path}: no such run directory")
    if not fs.exists(f"{root}/results.json"):
        raise RunNotFinished(f"{path}: not a finished run (no results.json: it stopped, or is still running)")
    results = json.loads(fs.cat_file(f"{root}/results.json"))
    config = (json.loads(fs.cat_file(f"{root}/config.json")) if fs.exists(f"{root}/config.json")
              else results.get("config") or {})
    if not config.get("student"):
        raise DataError(f"{path}: config.json names no student")
    return RunFiles(path, config, results)


def read_weights(run: RunFiles) -> dict[str, torch.Tensor]:
    """student.pt's state dict, tensors only."""
    name = f"{run.path}/student.pt"
    if not storage.is_remote(run.path):
        state = read_tensors(name, StudentWeightsError, "student weights file")
    else:
        buffer = io.BytesIO(run.read_bytes("student.pt"))
        try:
            state = read_tensors(buffer, StudentWeightsError, "student weights file")  # type: ignore[arg-type]
        except StudentWeightsError as exc:
            raise StudentWeightsError(str(exc).replace(repr(buffer), name)) from exc
    state = state.get("model", state)
    if "head.weight" not in state:
        raise StudentWeightsError(f"{name}: no head.weight tensor: not a featcache student's weights")
    return state


def student_spec(run: RunFiles, state: dict[str, torch.Tensor]) -> StudentSpec:
    """The run's StudentSpec: classes from the head, the vocabulary from the embedding table."""
    s = run.config["student"]
    vocab = int(state["embed.weight"].shape[0]) if "embed.weight" in state else 30522
    return StudentSpec(s["name"], int(state["head.weight"].shape[0]), int(s.get("image_size", 32)), vocab,
                       int(s.get("max_length", 128)), int(s.get("width", 128)))


def build_from_run(run: RunFiles) -> tuple[nn.Module, StudentSpec]:
    state = read_weights(run)
    spec = student_spec(run, state)
    model = build_student(spec, None, run.config["student"].get("key_map", ""))
    why = misfit(model.state_dict(), state)
    if why:
        raise StudentWeightsError(f"{run.path}/student.pt: does not fit student {spec.name}: {why}")
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def tokenizer_dir(run: RunFiles) -> str:
    """The run's own copy of its tokenizer, else the one its config names (data.tokenizer, or an
    hf: student's directory)."""
    name = f"{TOKENIZER_DIR}/tokenizer.json"
    if run.exists(name):
        if not storage.is_remote(run.path):
            return os.path.join(run.path, TOKENIZER_DIR)
        folder = tempfile.mkdtemp(prefix="featcache-tokenizer-")
        with open(os.path.join(folder, "tokenizer.json"), "wb") as fh:
            fh.write(run.read_bytes(name))
        return folder
    data, student = run.config.get("data", {}), run.config["student"]["name"]
    path = data.get("tokenizer") or (student.partition(":")[2] if student.startswith("hf:") else "")
    if not path:
        raise DataError(f"{run.path}: a text run without its tokenizer (no {name}, no data.tokenizer)")
    return resolve_path(path)


def make_transform(run: RunFiles, spec: StudentSpec) -> ImageTransform | TextTransform:
    if is_text_student(spec.name):
        return TextTransform(load_tokenizer(tokenizer_dir(run)), spec.max_length)
    return ImageTransform(spec.image_size, run.config["student"].get("resize_filter", "bilinear"))


def class_names(run: RunFiles, num_classes: int) -> list[str]:
    """results.json's classes (runs since MODEL_CARD.md), else the stores' recorded ones, else "0", "1", ..."""
    names = list(run.results.get("classes") or [])
    if not names:
        names = _store_classes(run.results)
    return [str(n) for n in names[:num_classes]] + [str(i) for i in range(len(names), num_classes)]


def _store_classes(results: dict[str, Any]) -> list[str]:
    from featcache.cache_tools import FeatureCache

    for path in (results.get("test_store"), (results.get("store") or {}).get("path")):
        try:
            classes = FeatureCache.open(path).source.get("classes") if path else None
        except Exception:  # an older run whose store is not here: numbered classes will do
            continue
        if classes:
            return list(classes)
    return []


def load_student(run_dir: str | os.PathLike) -> LoadedStudent:
    """(model in eval mode, input transform, class names) of a finished run directory."""
    run = open_run(run_dir)
    model, spec = build_from_run(run)
    return LoadedStudent(model, make_transform(run, spec), class_names(run, spec.num_classes))


__all__ = ["ImageTransform", "LoadedStudent", "RunFiles", "RunNotFinished", "TextTransform", "load_student",
           "open_run"]
