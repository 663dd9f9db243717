"""timm image models, from a hub tag (online) or a local state-dict checkpoint.

Checkpoints saved under another naming scheme are renamed by a ``key_map``; the
load is strict: every weight must match a parameter by name and shape, and any
leftover on either side is an error that lists it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from featcache.plumbing.key_maps import KEY_MAPS, KeyMapError, rename
from featcache.plumbing.weights import misfit, read_tensors

from ..config import TeacherConfig
from .base import TeacherError, TeacherWeightsError, describe_transform, finish, inference, library_version, state_dict_sha256

def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise TeacherError(f"{path}: checkpoint file not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    state = read_tensors(path, TeacherWeightsError, "checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    why = misfit(model.state_dict(), state)
    if why:
        raise TeacherWeightsError(f"{origin}: weights do not match the model: {why}")
    model.load_state_dict(state, strict=True)


class TimmTeacher:
    modality = "image"

    def __init__(self, cfg: TeacherConfig, device: torch.device) -> None:
        import timm
        from timm.data import create_transform, resolve_data_config

        self.cfg, self.name, self.device = cfg, cfg.name, device
        is_file = bool(cfg.pretrained) and (os.path.sep in cfg.pretrained or os.path.isfile(cfg.pretrained))
        hub_tag = cfg.pretrained if cfg.pretrained and not is_file else ""
        try:  # a tag ("ra_in1k") downloads from the hub when online; a file loads locally
            model = timm.create_model(f"{cfg.model}.{hub_tag}" if hub_tag else cfg.model, pretrained=bool(hub_tag))
        except (RuntimeError, OSError) as exc:
            raise TeacherError(f"timm model {cfg.model!r}: {exc}") from exc
        if is_file:
            state = _read_checkpoint(cfg.pretrained)
            if cfg.key_map and cfg.key_map not in KEY_MAPS:
                raise TeacherError(f"key_map {cfg.key_map!r} unknown (known: {', '.join(KEY_MAPS)})")
            try:
                state = rename(state, cfg.key_map, model.state_dict())
            except KeyMapError as exc:
                raise TeacherWeightsError(f"{cfg.pretrained}: {exc}") from exc
            load_strict(model, state, cfg.pretrained)
        self.weights_sha256 = state_dict_sha256(model)
        model.reset_classifier(0)  # features: the pooled output the classifier would read
        self.model = model.eval().to(device)
        data_cfg = resolve_data_config({}, model=model)
        overrides = {"input_size": (3, cfg.image_size, cfg.image_size) if cfg.image_size else None,
                     "mean": tuple(cfg.mean) or None, "std": tuple(cfg.std) or None,
                     "interpolation": cfg.interpolation or None, "crop_pct": cfg.crop_pct or None}
        data_cfg.update({k: v for k, v in overrides.items() if v is not None})
        self.data_cfg = data_cfg
        self.transform = create_transform(**data_cfg, is_training=False)
        self.dim = int(model.num_features)

    def spec(self) -> dict[str, Any]:
        return {"library": "timm", "library_version": library_version("timm"), "model_id": self.cfg.model,
                "checkpoint": os.path.basename(self.cfg.pretrained) if self.cfg.pretrained else "random-init",
                "weights_sha256": self.weights_sha256, "key_map": self.cfg.key_map,
                "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_cfg.items()},
                "transform": describe_transform(self.transform), "output": "pooled",
                "normalize": self.cfg.normalize}

    def prepare(self, items: list[Any]) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in items])

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Differentiable features (for fine-tuning the teacher); encode() is the cached path."""
        return self.model(batch.to(self.device))

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        with inference(self.device):
            return finish(self.features(batch), self.cfg.normalize)
