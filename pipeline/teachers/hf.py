"""Hugging Face transformers encoders and decoders, from a hub id (online) or a local directory.

Image sources: vision encoders (ViT, DINOv2, the vision tower of CLIP/SigLIP),
pooled by ``cls`` (default), ``mean`` over tokens, or ``pooler`` output.
Text sources: encoders pooled by ``mean`` over real tokens (default) or ``cls``;
decoder LMs by ``last_token`` (default for decoders) or ``mean``. ``layer`` picks
a hidden layer instead of the last one.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import TeacherConfig
from .base import TeacherError, finish, inference, library_version, state_dict_sha256

IMAGE_POOLING = ("cls", "mean", "pooler")
TEXT_POOLING = ("mean", "cls", "last_token", "pooler")


def _is_decoder(config: Any) -> bool:
    archs = " ".join(getattr(config, "architectures", None) or [])
    return bool(getattr(config, "is_decoder", False)) or "CausalLM" in archs or \
        getattr(config, "model_type", "") in ("gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "phi")


class HFTeacher:
    def __init__(self, cfg: TeacherConfig, device: torch.device, modality: str) -> None:
        import transformers

        self.cfg, self.name, self.device, self.modality = cfg, cfg.name, device, modality
        try:
            config = transformers.AutoConfig.from_pretrained(cfg.model)
            model = transformers.AutoModel.from_pretrained(cfg.model)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise TeacherError(f"transformers model {cfg.model!r}: {first}") from exc
        self.decoder = _is_decoder(config)
        if modality == "image":
            model = getattr(model, "vision_model", model)  # CLIP / SigLIP: the image tower alone
            self.processor = transformers.AutoImageProcessor.from_pretrained(cfg.model)
            if cfg.image_size:
                self.processor.size = {"height": cfg.image_size, "width": cfg.image_size}
                if hasattr(self.processor, "crop_size"):
                    self.processor.crop_size = {"height": cfg.image_size, "width": cfg.image_size}
            if cfg.mean:
                self.processor.image_mean, self.processor.image_std = list(cfg.mean), list(cfg.std)
            self.pooling = "cls" if cfg.output == "default" else cfg.output
            allowed = IMAGE_POOLING
        else:
            model = getattr(model, "text_model", model)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model)
            if self.tokenizer.pad_token is None:  # decoders often ship without one
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.tokenizer.padding_side = "right"
            self.pooling = ("last_token" if self.decoder else "mean") if cfg.output == "default" else cfg.output
            allowed = TEXT_POOLING
        if self.pooling not in allowed:
            raise TeacherError(f"teacher {cfg.name}: output must be one of {allowed} for {modality} inputs")
        self.weights_sha256 = state_dict_sha256(model)
        self.model = model.eval().to(device)
        self.dim = int(self._dummy().shape[1])

    def _dummy(self) -> torch.Tensor:
        if self.modality == "text":
            return self.encode(self.prepare(["a"]))
        from PIL import Image
        return self.encode(self.prepare([Image.new("RGB", (32, 32))]))

    def spec(self) -> dict[str, Any]:
        pre: Any
        if self.modality == "image":
            p = self.processor
            pre = {"class": type(p).__name__, "size": getattr(p, "size", None),
                   "crop_size": getattr(p, "crop_size", None), "mean": list(getattr(p, "image_mean", []) or []),
                   "std": list(getattr(p, "image_std", []) or []), "resample": str(getattr(p, "resample", ""))}
        else:
            pre = {"class": type(self.tokenizer).__name__, "max_length": self.cfg.max_length,
                   "vocab_size": self.tokenizer.vocab_size}
        model_id = self.cfg.model if not os.path.isdir(self.cfg.model) else os.path.basename(
            os.path.normpath(self.cfg.model))
        return {"library": "transformers", "library_version": library_version("transformers"),
                "model_id": model_id, "weights_sha256": self.weights_sha256, "modality": self.modality,
                "pooling": self.pooling, "layer": self.cfg.layer, "normalize": self.cfg.normalize,
                "preprocessing": pre}

    def prepare(self, items: list[Any]) -> dict[str, torch.Tensor]:
        if self.modality == "image":
            return dict(self.processor(images=list(items), return_tensors="pt"))
        return dict(self.tokenizer(list(items), padding=True, truncation=True, max_length=self.cfg.max_length,
                                   return_tensors="pt"))

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with inference(self.device):
            return finish(self.features(batch), self.cfg.normalize)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable pooled features (for fine-tuning the teacher); encode() is the cached path."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        want_hidden = self.cfg.layer != -1
        out = self.model(**batch, output_hidden_states=want_hidden)
        hidden = out.hidden_states[self.cfg.layer] if want_hidden else out.last_hidden_state
        if self.pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise TeacherError(f"teacher {self.name}: this model has no pooler output")
            feats = out.pooler_output
        elif self.pooling == "cls":
            feats = hidden[:, 0]
        else:
            mask = batch.get("attention_mask")
            mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask
            if self.pooling == "last_token":
                last = mask.long().sum(1) - 1
                feats = hidden[torch.arange(len(hidden), device=hidden.device), last]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                feats = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return feats
