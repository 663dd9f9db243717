"""open_clip models: any architecture, a pretrained tag (online) or a local checkpoint;
the image tower for image sources and the text tower for text sources.

``output``: ``embed`` (default) is the joint embedding after the projection;
``pooled`` is the image tower's pooled output before the projection.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import TeacherConfig
from .base import TeacherError, describe_transform, finish, inference, library_version, state_dict_sha256

OUTPUTS = ("embed", "pooled")


class OpenClipTeacher:
    def __init__(self, cfg: TeacherConfig, device: torch.device, modality: str) -> None:
        import open_clip

        self.cfg, self.name, self.device, self.modality = cfg, cfg.name, device, modality
        self.output = "embed" if cfg.output == "default" else cfg.output
        if self.output not in OUTPUTS:
            raise TeacherError(f"teacher {cfg.name}: output must be one of {OUTPUTS} for open_clip")
        if cfg.model_config:
            if not os.path.isfile(cfg.model_config):
                raise TeacherError(f"{cfg.model_config}: open_clip model config not found")
            open_clip.add_model_config(cfg.model_config)
        if cfg.pretrained and os.path.sep in cfg.pretrained and not os.path.isfile(cfg.pretrained):
            raise TeacherError(f"{cfg.pretrained}: checkpoint file not found")
        kwargs: dict[str, Any] = {}
        if cfg.image_size:
            kwargs["force_image_size"] = cfg.image_size
        if cfg.mean:
            kwargs["image_mean"], kwargs["image_std"] = tuple(cfg.mean), tuple(cfg.std)
        if cfg.interpolation:
            kwargs["image_interpolation"] = cfg.interpolation
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=cfg.pretrained or None, **kwargs)
        except RuntimeError as exc:
            raise TeacherError(f"open_clip model {cfg.model!r}: {exc}") from exc
        self.weights_sha256 = state_dict_sha256(model)
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        if modality == "text":
            if self.output == "pooled":
                raise TeacherError(f"teacher {cfg.name}: output 'pooled' is for the image tower only")
            self.tokenizer = open_clip.get_tokenizer(cfg.model)
        elif self.output == "pooled" and getattr(self.model.visual, "proj", None) is None:
            raise TeacherError(f"teacher {cfg.name}: this image tower has no projection to stop before")
        self.dim = int(self._dummy_dim())

    def _dummy_dim(self) -> int:
        if self.modality == "text":
            return self.encode(self.prepare(["a"])).shape[1]
        from PIL import Image
        return self.encode(self.prepare([Image.new("RGB", (32, 32))])).shape[1]

    def spec(self) -> dict[str, Any]:
        return {"library": "open_clip", "library_version": library_version("open_clip_torch"),
                "model_id": self.cfg.model, "pretrained": os.path.basename(self.cfg.pretrained) or "random-init",
                "weights_sha256": self.weights_sha256, "tower": self.modality, "output": self.output,
                "normalize": self.cfg.normalize,
                "preprocessing": describe_transform(self.preprocess) if self.modality == "image" else
                f"open_clip tokenizer for {self.cfg.model}"}

    def prepare(self, items: list[Any]) -> torch.Tensor:
        if self.modality == "text":
            return self.tokenizer(list(items))
        return torch.stack([self.preprocess(img) for img in items])

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Differentiable features (for fine-tuning the teacher); encode() is the cached path."""
        batch = batch.to(self.device)
        if self.modality == "text":
            return self.model.encode_text(batch)
        if self.output == "pooled":
            visual = self.model.visual
            proj, visual.proj = visual.proj, None
            try:
                return visual(batch)
            finally:
                visual.proj = proj
        return self.model.encode_image(batch)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        with inference(self.device):
            return finish(self.features(batch), self.cfg.normalize)
