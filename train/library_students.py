"""Students that are a library's own network: any timm or torchvision image architecture, any
Hugging Face encoder from a local directory as a text student.

Each is split where its classifier begins: ``h`` is what the library's own last linear layer
reads (timm's pooled pre-logits, torchvision's input to its last ``nn.Linear``, the encoder's
mean-pooled last hidden state), and a fresh linear head maps it to the task's classes. The only
module of the train room that imports a model library; no teacher code is ever imported.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from featcache.plumbing.config import ConfigError
from featcache.plumbing.key_maps import rename
from featcache.plumbing.weights import misfit

PREFIXES = ("timm:", "torchvision:", "hf:")


class SplitStudent(nn.Module):
    """A library body whose output is the penultimate features, and the task's linear head."""

    def __init__(self, body: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(dim, num_classes)

    def forward(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h


class MeanPooled(nn.Module):
    """A Hugging Face encoder's last hidden state, averaged over the real (unpadded) tokens."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def is_library(name: str) -> bool:
    return name.startswith(PREFIXES)


def is_text(name: str) -> bool:
    return name.startswith("hf:")


def _timm_body(arch: str) -> tuple[nn.Module, int, str]:
    import timm

    if not timm.is_model(arch):
        raise ConfigError(f"student.name: timm has no architecture {arch!r} (timm.list_models() lists them)")
    body = timm.create_model(arch, pretrained=False, num_classes=0)  # forward -> pooled pre-logits
    return body, int(body.num_features), str(body.pretrained_cfg.get("classifier", "classifier"))


def _torchvision_body(arch: str) -> tuple[nn.Module, int, str]:
    import torchvision

    try:
        net = torchvision.models.get_model(arch, weights=None)
    except ValueError as exc:
        raise ConfigError(f"student.name: torchvision has no architecture {arch!r} "
                          "(torchvision.models.list_models() lists them)") from exc
    name, last = next(((n, m) for n, m in reversed(list(net.named_modules())) if isinstance(m, nn.Linear)),
                      (None, None))
    if last is None:
        raise ConfigError(f"student.name: torchvision's {arch} has no linear classifier to split at")
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, nn.Identity())
    return net, int(last.in_features), name


def _hf_body(path: str) -> tuple[nn.Module, int]:
    from transformers import AutoModel

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no Hugging Face model directory (student.name = 'hf:<directory>')")
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    return MeanPooled(encoder), int(encoder.config.hidden_size)


def build_library_student(name: str, num_classes: int, weights: dict[str, torch.Tensor] | None = None,
                          key_map: str = "", origin: str = "") -> SplitStudent:
    """The library network ``name`` (``timm:arch``, ``torchvision:arch``, ``hf:dir``) with a new head,
    its body starting from ``weights`` (the library's own state dict, classifier included or not)."""
    kind, _, what = name.partition(":")
    if kind == "hf":
        from featcache.plumbing.paths import resolve_path

        body, dim = _hf_body(resolve_path(what))
        classifier = ""
    else:
        body, dim, classifier = (_timm_body if kind == "timm" else _torchvision_body)(what)
    if weights is not None:
        load_body(body, weights, key_map, classifier, origin or name)
    return SplitStudent(body, dim, num_classes)


def load_body(body: nn.Module, state: dict[str, torch.Tensor], key_map: str, classifier: str, origin: str) -> None:
    """Every tensor of the body from ``state``, strictly by name and shape; only the library's own
    classifier (``classifier.*``), which the student replaces, may be left over."""
    from .students import StudentWeightsError

    own = body.state_dict()
    state = rename(state, key_map, own)
    if classifier:
        state = {k: v for k, v in state.items() if not (k == classifier or k.startswith(classifier + "."))}
    why = misfit(own, state)
    if why:
        raise StudentWeightsError(f"{origin}: weights do not match the student: {why}")
    body.load_state_dict(state, strict=True)
