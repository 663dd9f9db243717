"""A finished run's student as one self-contained file for serving, plus a JSON sidecar that says
how to feed it and what it is (classes, preprocessing, teachers and store fingerprints, method, test
accuracy).

- ``onnx``: logits out; images in as float (B, 3, S, S) already normalised, text as ``input_ids``
  and ``attention_mask`` int64 (B, L); the batch axis (and the text length) dynamic. Checked
  against the torch student with ONNX Runtime when it is installed.
- ``torchscript``: the same forward, traced (``torch.jit.load`` needs no featcache).
- ``safetensors``: the weights; the sidecar names the architecture that ``load_student`` builds.

A text student's tokenizer travels beside the file as ``<out>.tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from featcache.plumbing import atomic
from featcache.plumbing.config import ConfigError
from featcache.plumbing.provenance import created_by

from .load import ImageTransform, RunFiles, TextTransform, build_from_run, class_names, make_transform, open_run
from .model_card import _method_params
from .students import count_parameters

FORMATS = ("onnx", "torchscript", "safetensors")
OPSET = 17


class ImageLogits(nn.Module):
    """pixels (B, 3, S, S) normalised -> logits (B, C)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.student(pixels)[0]


class TextLogits(nn.Module):
    """input_ids, attention_mask (B, L) int64 -> logits (B, C)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.student((input_ids, attention_mask.bool()))[0]


def serving_module(model: nn.Module, transform: ImageTransform | TextTransform) -> nn.Module:
    return (TextLogits if isinstance(transform, TextTransform) else ImageLogits)(model).eval()


def example_inputs(transform: ImageTransform | TextTransform, batch: int = 2,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes and dtypes (random pixels, or random tokens with some padding)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(transform, TextTransform):
        length = transform.max_length
        vocab = int(transform.tokenizer.vocab_size)
        ids = torch.randint(1, vocab, (batch, length), generator=g)
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None] < lengths[:, None]).long()
        return ids * mask + transform.tokenizer.pad_id * (1 - mask), mask
    return (torch.rand(batch, 3, transform.size, transform.size, generator=g) * 2 - 1,)


def io_names(transform: ImageTransform | TextTransform) -> tuple[list[str], dict[str, dict[int, str]]]:
    if isinstance(transform, TextTransform):
        return (["input_ids", "attention_mask"],
                {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                 "logits": {0: "batch"}})
    return ["pixels"], {"pixels": {0: "batch"}, "logits": {0: "batch"}}


def _onnx(module: nn.Module, transform: ImageTransform | TextTransform, out: str) -> dict[str, Any]:
    names, axes = io_names(transform)
    kw: dict[str, Any] = {"input_names": names, "output_names": ["logits"], "dynamic_axes": axes,
                          "opset_version": OPSET}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kw["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed, dynamic_axes honoured
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic.write_with(out, lambda fh: torch.onnx.export(module, example_inputs(transform), fh, **kw))
    return onnx_check(out, module, transform)


def onnx_check(path: str, module: nn.Module, transform: ImageTransform | TextTransform,
               inputs: tuple[torch.Tensor, ...] | None = None) -> dict[str, Any]:
    """Max |ONNX Runtime - torch| of the logits on ``inputs`` (3 random rows by default); {} without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    inputs = inputs if inputs is not None else example_inputs(transform, batch=3, seed=1)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names, _ = io_names(transform)
    got = session.run(["logits"], {n: t.numpy() for n, t in zip(names, inputs)})[0]
    with torch.no_grad():
        want = module(*inputs).numpy()
    return {"runtime": f"onnxruntime {ort.__version__}", "rows": int(len(want)),
            "max_abs_diff": float(np.abs(got - want).max())}


def _torchscript(module: nn.Module, transform: ImageTransform | TextTransform, out: str) -> dict[str, Any]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example_inputs(transform), check_trace=False)
        atomic.write_with(out, lambda fh: torch.jit.save(traced, fh))
    return {}


def _safetensors(model: nn.Module, out: str, run: RunFiles) -> dict[str, Any]:
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic.write_bytes(out, save(state, metadata={"featcache_student": run.config["student"]["name"]}))
    return {}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_student(run_dir: str | os.PathLike, format: str, out: str | os.PathLike, *,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write the run's student to ``out`` in ``format`` and its sidecar to ``<out>.json``; returns the sidecar."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: one of {', '.join(FORMATS)}")
    out = os.fspath(out)
    sidecar_path = out + ".json"
    if not overwrite and any(os.path.exists(p) for p in (out, sidecar_path)):
        raise FileExistsError(f"{out}: exists (add --overwrite)")
    run = open_run(run_dir)
    model, spec = build_from_run(run)
    transform = make_transform(run, spec)
    module = serving_module(model, transform)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    check = {"onnx": lambda: _onnx(module, transform, out), "torchscript": lambda: _torchscript(module, transform, out),
             "safetensors": lambda: _safetensors(model, out, run)}[format]()
    names, axes = io_names(transform)
    results, store = run.results, run.results.get("store") or {}
    sidecar: dict[str, Any] = {
        "format": format, "file": os.path.basename(out), "sha256": _sha256(out),
        "classes": class_names(run, spec.num_classes), "preprocessing": transform.spec(),
        "inputs": names if format != "safetensors" else [], "outputs": ["logits"] if format != "safetensors" else [],
        "dynamic_axes": axes if format == "onnx" else {},
        "postprocessing": "softmax over logits gives the class probabilities",
        "student": {"name": spec.name, "num_classes": spec.num_classes, "image_size": spec.image_size,
                    "max_length": spec.max_length, "width": spec.width, "vocab_size": spec.vocab_size,
                    "parameters": count_parameters(model)},
        "method": results.get("method"), "method_params": _method_params(run.config),
        "label_budget": (run.config.get("data") or {}).get("label_budget"),
        "teachers": store.get("teachers") or {}, "store": {k: store.get(k) for k in ("path", "dataset_fingerprint")},
        "test_accuracy": results.get("test_accuracy"), "val_accuracy": results.get("val_accuracy"),
        "run": run.path, "exported_by": created_by(),
    }
    if format == "onnx":
        sidecar["opset"] = OPSET
        sidecar["check"] = check
    if isinstance(transform, TextTransform):
        tok = out + ".tokenizer.json"
        from .load import tokenizer_dir

        src = os.path.join(tokenizer_dir(run), "tokenizer.json")
        with open(src, "rb") as a, atomic.atomic_open(tok, "wb") as b:
            shutil.copyfileobj(a, b)
        sidecar["preprocessing"]["tokenizer"] = os.path.basename(tok)
    atomic.write_json(sidecar_path, sidecar)
    return sidecar


__all__ = ["FORMATS", "export_student", "onnx_check", "serving_module", "example_inputs"]
