"""Sources that are folders: images in one sub-folder per class (or flat, unlabeled), text
documents in one sub-folder per class (BBC News), and one file per class of ``%``-separated
entries (Debian's fortunes)."""

from __future__ import annotations

import os

import numpy as np

from .decode import InputError, check_text, image_params, read_image_file
from .source import Source, SourceError


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def image_folder(root: str, max_image_pixels: int = 0) -> Source:
    if not os.path.isdir(root):
        raise SourceError(f"{root}: image folder not found")
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    classes = subdirs
    entries: list[tuple[str, int]] = []
    if subdirs:
        for label, name in enumerate(subdirs):
            for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
                entries += [(os.path.relpath(os.path.join(dirpath, f), root), label)
                            for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    else:
        entries = [(f, -1) for f in sorted(os.listdir(root)) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not entries:
        raise SourceError(f"{root}: no images found (expected one sub-folder per class, or images)")
    ids = [e[0] for e in entries]
    return Source("image_folder", "image", ids, np.array([e[1] for e in entries], np.int64), classes,
                  {"root": os.path.abspath(root), **image_params(max_image_pixels)},
                  lambda i: read_image_file(os.path.join(root, ids[i]), max_image_pixels))


def text_categories(root: str) -> Source:
    if not os.path.isdir(root):
        raise SourceError(f"{root}: text corpus folder not found")
    files = sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))
                   and not f.endswith((".dat", ".u8")) and not f.startswith("."))
    ids, labels, texts = [], [], []
    for label, name in enumerate(files):
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as fh:
            entries, current = [], []
            for line in fh:
                if line.rstrip("\n") == "%":
                    entries.append("".join(current))
                    current = []
                else:
                    current.append(line)
            entries.append("".join(current))
        for j, text in enumerate(e for e in entries if e.strip()):
            ids.append(f"{name}/{j:06d}")
            labels.append(label)
            texts.append(text.strip())
    if not ids:
        raise SourceError(f"{root}: no text entries found")
    return Source("text_categories", "text", ids, np.array(labels, np.int64), files,
                  {"root": os.path.abspath(root)}, lambda i: check_text(texts[i], ids[i]))


def _read_document(path: str) -> str:
    """UTF-8, or Latin-1 for the odd legacy file (BBC News has one): never a decode failure."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return check_text(text.strip(), path)


def text_folder(root: str) -> Source:
    if not os.path.isdir(root):
        raise SourceError(f"{root}: text folder not found")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    ids: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.endswith(".txt"))
        ids += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    if not ids:
        raise SourceError(f"{root}: no .txt documents found (expected one sub-folder per class)")
    return Source("text_folder", "text", ids, np.array(labels, np.int64), classes, {"root": os.path.abspath(root)},
                  lambda i: _read_document(os.path.join(root, ids[i])))
