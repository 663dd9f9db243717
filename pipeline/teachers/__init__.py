"""Teacher adapters, one module per family, behind the small ``Teacher`` protocol."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..config import TeacherConfig
from featcache.plumbing.paths import resolve_path

from .base import Teacher, TeacherError, TeacherWeightsError, best_device
from .check import verify_output


def _open_clip(cfg: TeacherConfig, device: torch.device, modality: str) -> Teacher:
    from .open_clip import OpenClipTeacher
    return OpenClipTeacher(cfg, device, modality)


def _hf(cfg: TeacherConfig, device: torch.device, modality: str) -> Teacher:
    from .hf import HFTeacher
    return HFTeacher(cfg, device, modality)


def _timm(cfg: TeacherConfig, device: torch.device, modality: str) -> Teacher:
    if modality != "image":
        raise TeacherError(f"teacher {cfg.name}: timm models take images, the source holds {modality}")
    from .timm import TimmTeacher
    return TimmTeacher(cfg, device)


REGISTRY: dict[str, Callable[[TeacherConfig, torch.device, str], Teacher]] = {
    "open_clip": _open_clip, "hf": _hf, "timm": _timm,
}


def build_teacher(cfg: TeacherConfig, device: torch.device, modality: str) -> Teacher:
    """The adapter for ``cfg.kind``; ``pkg:`` paths point inside installed packages. A config with
    ``check_output`` gets its features on the fixed check input compared first (check.py): weights
    that load by name and shape into another computation than theirs are refused here."""
    cfg = dataclasses.replace(cfg, model=resolve_path(cfg.model), pretrained=resolve_path(cfg.pretrained),
                              model_config=resolve_path(cfg.model_config))
    teacher = REGISTRY[cfg.kind](cfg, device, modality)
    if cfg.check_output:
        verify_output(teacher, cfg, device)
    return teacher


__all__ = ["REGISTRY", "Teacher", "TeacherError", "TeacherWeightsError", "best_device", "build_teacher"]
