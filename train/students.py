"""Task-specific students. Every student returns ``(logits, h)``, where h is its penultimate
features (what AFT and the KD baselines regularise).

Small built-ins, written here because no library has them this small: images ``small_cnn``,
``vit_tiny``; text (token ids in, with a padding mask) ``text_transformer``, ``text_cnn``.
Published architectures come from their libraries (``library_students``): ``timm:<arch>``,
``torchvision:<arch>`` (``resnet18`` and ``mobilenet_v3_small`` are short for torchvision's), and
``hf:<directory>`` for a Hugging Face encoder as a text student.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from featcache.plumbing.config import ConfigError
from featcache.plumbing.errors import DataError
from featcache.plumbing.weights import read_tensors

from .library_students import build_library_student, is_library, is_text


@dataclass(frozen=True)
class StudentSpec:
    name: str
    num_classes: int
    image_size: int = 32
    vocab_size: int = 30522
    max_length: int = 128
    width: int = 128


class SmallCNN(nn.Module):
    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        w = spec.width // 4

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(4 * w, spec.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h


class TinyViT(nn.Module):
    def __init__(self, spec: StudentSpec, patch: int = 4, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        if spec.image_size % patch:
            raise ConfigError(f"student.image_size {spec.image_size} must be a multiple of the patch size {patch}")
        d = spec.width
        self.patchify = nn.Conv2d(3, d, patch, stride=patch)
        n = (spec.image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, spec.num_classes)

    def forward(self, x):
        tokens = self.patchify(x).flatten(2).transpose(1, 2)
        # x.shape[0], not len(x): a traced export (ONNX) keeps the batch size dynamic
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        h = self.norm(self.encoder(tokens)[:, 0])
        return self.head(h), h


class TextTransformer(nn.Module):
    def __init__(self, spec: StudentSpec, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        d = spec.width
        self.embed = nn.Embedding(spec.vocab_size, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, spec.max_length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(d, spec.num_classes)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]):
        ids, mask = batch
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).float()
        h = (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # mean over real tokens
        return self.head(h), h


class TextCNN(nn.Module):
    def __init__(self, spec: StudentSpec, kernels: tuple[int, ...] = (3, 4, 5)) -> None:
        super().__init__()
        d = spec.width
        self.embed = nn.Embedding(spec.vocab_size, d, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(d, d, k, padding=k // 2) for k in kernels)
        self.head = nn.Linear(d * len(kernels), spec.num_classes)

    def forward(self, batch):
        ids, mask = batch
        x = (self.embed(ids) * mask.unsqueeze(-1)).transpose(1, 2)
        neg = torch.finfo(x.dtype).min
        pooled = [torch.relu(c(x))[..., : ids.shape[1]].masked_fill(~mask.unsqueeze(1), neg).amax(-1)
                  for c in self.convs]
        h = torch.cat(pooled, 1)
        return self.head(h), h


IMAGE_STUDENTS = {"small_cnn": SmallCNN, "vit_tiny": TinyViT}
TEXT_STUDENTS = {"text_transformer": TextTransformer, "text_cnn": TextCNN}
STUDENTS = {**IMAGE_STUDENTS, **TEXT_STUDENTS}
ALIASES = {"resnet18": "torchvision:resnet18", "mobilenet_v3_small": "torchvision:mobilenet_v3_small"}
RETIRED = {"efficientnet_lite0": "timm:tf_efficientnet_lite0 (with student.key_map = \"efficientnet_pytorch\" "
                                 "for the Lite packages' weights)"}


def name_error(name: str) -> str:
    """Why ``name`` names no student ("" when it does)."""
    if name in RETIRED:
        return f"{name!r} was a hand-written copy of a published network, retired; use {RETIRED[name]}"
    if name in STUDENTS or name in ALIASES:
        return ""
    if is_library(name):
        return "" if name.partition(":")[2] else f"{name!r}: give the architecture after the colon"
    return (f"{name!r} unknown (known: {', '.join([*STUDENTS, *ALIASES])}, or timm:<arch>, torchvision:<arch>, "
            "hf:<directory>)")


def is_text_student(name: str) -> bool:
    return name in TEXT_STUDENTS or is_text(name)


def build_student(spec: StudentSpec, checkpoint: str | None = None, key_map: str = "") -> nn.Module:
    """The student ``spec`` names, starting from ``checkpoint`` when given: a featcache run's
    ``student.pt`` (its head may be another task's), or a library student's own library weights."""
    error = name_error(spec.name)
    if error:
        raise ConfigError(f"student.name: {error}")
    name = ALIASES.get(spec.name, spec.name)
    state = None
    if checkpoint:
        state = _read_weights(checkpoint)
        state = state.get("model", state)
    if is_library(name):
        ours = state is not None and any(k.startswith("body.") for k in state)
        model = build_library_student(name, spec.num_classes, None if ours else state, key_map, checkpoint or "")
        if not ours:
            return model
    else:
        model = STUDENTS[name](spec)
    if state is not None:
        own = model.state_dict()
        # a checkpoint of another task may carry another head: keep everything else
        kept = {k: v for k, v in state.items() if k in own and hasattr(v, "shape") and own[k].shape == v.shape}
        skipped = sorted(set(own) - set(kept))
        if not kept or any(not k.startswith("head.") for k in skipped):
            raise StudentWeightsError(f"{checkpoint}: does not match student {spec.name} "
                                      f"(unmatched: {', '.join(skipped[:5])})")
        model.load_state_dict(kept, strict=False)
    return model


class StudentWeightsError(DataError):
    """A weights file that does not load into the student: not tensors, damaged, or another model's."""


def _read_weights(path: str) -> dict:
    """Tensors only (``weights_only``): a weights file never runs code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: student weights not found")
    return read_tensors(path, StudentWeightsError)


def read_word_embeddings(path: str) -> torch.Tensor:
    """The token embedding table of a local Hugging Face checkpoint (a directory or one weights file).

    Read straight from the weights file, so a text student can start from a teacher's
    vocabulary without importing the teacher's library.
    """
    files = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in ("model.safetensors",
                                                                              "pytorch_model.bin")]
    for f in files:
        if not os.path.isfile(f):
            continue
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(f, framework="pt") as fh:
                key = next((k for k in fh.keys() if k.endswith("word_embeddings.weight")), None)
                if key is not None:
                    return fh.get_tensor(key).float()
        else:
            state = _read_weights(f)
            key = next((k for k in state if k.endswith("word_embeddings.weight")), None)
            if key is not None:
                return state[key].float()
        raise StudentWeightsError(f"{f}: no word_embeddings.weight tensor")
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin to read embeddings from")


def init_embeddings(model: nn.Module, table: torch.Tensor, origin: str) -> None:
    embed = getattr(model, "embed", None)
    if not isinstance(embed, nn.Embedding):
        raise ConfigError("student.embeddings: only text students have a token embedding table")
    if tuple(table.shape) != tuple(embed.weight.shape):
        raise ConfigError(f"student.embeddings: {origin} holds a {tuple(table.shape)} table, the student "
                         f"{tuple(embed.weight.shape)}; set student.width = {table.shape[1]} (and use its tokenizer)")
    with torch.no_grad():
        embed.weight.copy_(table)


def feature_dim(model: nn.Module, spec: StudentSpec) -> int:
    """Width of h, found by one forward pass on a dummy input."""
    model_was_training = model.training
    model.eval()
    with torch.no_grad():
        if is_text_student(spec.name):
            ids = torch.ones(2, 4, dtype=torch.long)
            _, h = model((ids, torch.ones_like(ids, dtype=torch.bool)))
        else:
            _, h = model(torch.zeros(2, 3, spec.image_size, spec.image_size))
    model.train(model_was_training)
    return int(h.shape[1])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["StudentSpec", "StudentWeightsError", "build_student", "read_word_embeddings", "init_embeddings",
           "feature_dim", "count_parameters", "name_error", "is_text_student", "STUDENTS", "IMAGE_STUDENTS",
           "TEXT_STUDENTS"]
