"""timm image models, from a hub tag (online) or a local state-dict checkpoint.

Checkpoints saved under another naming scheme are renamed by a ``key_map``; the
load is strict: every weight must match a parameter by name and shape, and any
leftover on either side is an error that lists it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import torch

from featcache.plumbing.weights import misfit, read_tensors

from ..config import TeacherConfig
from .base import TeacherError, TeacherWeightsError, describe_transform, finish, inference, library_version, state_dict_sha256

_EFFNET_BLOCK = {  # efficientnet_pytorch names inside a block -> timm names
    "expand": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
               "_bn2": "bn3"},
    "depthwise": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                  "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}


def remap_efficientnet_pytorch(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch (``_blocks.N._depthwise_conv``) -> timm (``blocks.S.I.conv_dw``).

    Flat block N is the N-th block of the timm model in order; whether it is an
    inverted-residual block (has ``_expand_conv``) picks the inner names.
    """
    timm_blocks = sorted({m.group(1) for k in model.state_dict() if (m := re.match(r"(blocks\.\d+\.\d+)\.", k))},
                         key=lambda s: tuple(int(x) for x in s.split(".")[1:]))
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)$", key)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _EFFNET_BLOCK["expand" if n in expands else "depthwise"]
            if n >= len(timm_blocks) or part not in names:
                raise TeacherWeightsError(f"checkpoint key {key}: no matching timm block parameter")
            out[f"{timm_blocks[n]}.{names[part]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _EFFNET_TOP:
            raise TeacherWeightsError(f"checkpoint key {key}: no matching timm parameter")
        out[f"{_EFFNET_TOP[top]}.{rest}"] = value
    return out


KEY_MAPS: dict[str, Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]] = {
    "efficientnet_pytorch": remap_efficientnet_pytorch,
    "strip_module": lambda state, model: {k.removeprefix("module."): v for k, v in state.items()},
}


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
            if cfg.key_map:
                if cfg.key_map not in KEY_MAPS:
                    raise TeacherError(f"key_map {cfg.key_map!r} unknown (known: {', '.join(KEY_MAPS)})")
                state = KEY_MAPS[cfg.key_map](state, model)
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
