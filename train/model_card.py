"""MODEL_CARD.md: what a finished run's student is, what it was distilled from, how well it does and
how to use it, written into the run directory by ``loop.finish`` just before results.json (which
marks the run done), beside a copy of a text student's tokenizer so the directory travels whole."""

from __future__ import annotations

import os
import shutil
from typing import Any

from featcache.plumbing import atomic
from featcache.plumbing.cli import human_bytes

from .methods import registry

CARD = "MODEL_CARD.md"


def run_classes(splits: dict[str, Any], num_classes: int) -> list[str]:
    """The class names the stores recorded (the test store's first: a transfer set may hold none),
    numbered where a store names none."""
    names: list[str] = []
    for split in ("test", "train"):
        names = list(splits[split].cache.source.get("classes") or []) if split in splits else []
        if names:
            break
    return [str(n) for n in names[:num_classes]] + [str(i) for i in range(len(names), num_classes)]


def write_run_extras(out_dir: str, config: dict[str, Any], results: dict[str, Any], tokenizer: str = "") -> None:
    """MODEL_CARD.md, and ``tokenizer/tokenizer.json`` of a text student (``tokenizer``: its directory)."""
    if tokenizer and os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        os.makedirs(os.path.join(out_dir, "tokenizer"), exist_ok=True)
        with open(os.path.join(tokenizer, "tokenizer.json"), "rb") as src, \
                atomic.atomic_open(os.path.join(out_dir, "tokenizer", "tokenizer.json"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    weights = os.path.join(out_dir, "student.pt")
    size = os.path.getsize(weights) if os.path.exists(weights) else 0
    atomic.write_text(os.path.join(out_dir, CARD), model_card(out_dir, config, results, size))


def _acc(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _method_params(config: dict[str, Any]) -> dict[str, Any]:
    """The [method] keys the run's method reads (all of them for a method no longer registered)."""
    table = dict(config.get("method") or {})
    cls = registry.lookup(table.get("name", ""))
    keys = cls.params() if cls is not None else [k for k in table if k != "name"]
    return {k: table[k] for k in keys if k in table}


def model_card(out_dir: str, config: dict[str, Any], results: dict[str, Any], weights_bytes: int = 0) -> str:
    student, data, optim = config.get("student", {}), config.get("data", {}), config.get("optim", {})
    store = results.get("store") or {}
    teachers = store.get("teachers") or {}
    classes = results.get("classes") or []
    text = student.get("name", "").startswith(("text_", "hf:"))
    budget = data.get("label_budget", 0)
    params = _method_params(config)
    lines = [
        f"# Model card: {results.get('method')} student `{student.get('name')}`", "",
        f"Written by featcache {(results.get('featcache') or {}).get('version', '')} at the end of the run in "
        f"`{out_dir}`.", "",
        "## Student", "",
        f"- architecture: `{student.get('name')}` (width {student.get('width')}), "
        f"{results.get('student_parameters', 0):,} parameters, {human_bytes(weights_bytes)} (`student.pt`)",
        ("- inputs: token ids of the run's tokenizer (`tokenizer/tokenizer.json`), "
         f"max_length {student.get('max_length')}" if text else
         f"- inputs: RGB images resized to {student.get('image_size')} x {student.get('image_size')} px "
         f"({student.get('resize_filter', 'bilinear')}), scaled to [-1, 1]: (x / 255 - 0.5) / 0.5"),
        f"- classes ({len(classes)}): {', '.join(classes)}", "",
        "## Distilled from", "",
        f"- store: `{store.get('path')}` (dataset fingerprint `{store.get('dataset_fingerprint')}`); "
        f"test store `{results.get('test_store')}`",
    ]
    lines += [f"- teacher `{name}`: fingerprint `{fp}`" for name, fp in teachers.items()] or [
        "- teachers: none (this method reads no teacher features)"]
    lines += [
        "", "## Training", "",
        f"- method: `{results.get('method')}`" + (f", {', '.join(f'{k} = {v}' for k, v in params.items())}"
                                                  if params else ""),
        f"- optimiser: {optim.get('name')}, lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
        f"batch {optim.get('batch_size')}, " + (f"{optim.get('steps')} steps" if optim.get("steps")
                                                 else f"{optim.get('epochs')} epochs") + f"; seed {config.get('seed')}",
        f"- label budget: {f'{budget} labeled rows per class' if budget else 'every labeled row'} "
        f"({results.get('train_rows')} training rows); unlabeled rows per batch: {data.get('unlabeled_per_batch', 0)}",
        f"- wall time {results.get('wall_seconds', 0):.0f} s on {results.get('device')} "
        f"x{results.get('world_size', 1)}",
        "", "## Accuracy", "",
        f"- validation {_acc(results.get('val_accuracy'))}; test {_acc(results.get('test_accuracy'))} on "
        f"{results.get('test_rows')} rows", "",
        "| class | test accuracy |", "|---|---|",
    ]
    per_class = results.get("test_per_class_accuracy") or []
    lines += [f"| {classes[i] if i < len(classes) else i} | {a:.4f} |" for i, a in enumerate(per_class)]
    lines += [
        "", "## Use", "", "```python",
        "from featcache.train import load_student, predict",
        f"model, transform, classes = load_student({out_dir!r})",
        "logits, _ = model(transform.batch([" + ("'some text'" if text else "pil_image") + "]))",
        f"preds = predict({out_dir!r}, 'SOURCE')  # a folder, manifest, shards, Parquet, or a config's [source]",
        "```", "",
        f"    featcache-train predict {out_dir} --source SOURCE --out predictions.parquet [--eval]",
        f"    featcache-train export {out_dir} --format onnx --out student.onnx   # or torchscript, safetensors",
        "",
    ]
    return "\n".join(lines)
