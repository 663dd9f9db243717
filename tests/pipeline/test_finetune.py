"""TOKT step 1 with a fine-tuned teacher: a stage-1 job whose logits land in the transfer store."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from featcache.cache_tools import FeatureCache, verify

from extract_helpers import extract, timm_teacher  # noqa: E402


def test_finetune_teacher_and_cache_its_logits(images, timm_ckpt, tmp_path):
    src = {"kind": "image_folder", "root": images}
    extract(tmp_path / "labeled.zarr", src, [timm_teacher(timm_ckpt)])
    extract(tmp_path / "target.zarr", src, [timm_teacher(timm_ckpt)], views=2)
    cfg = tmp_path / "ft.toml"
    cfg.write_text(textwrap.dedent(f"""
        labeled_store = {str(tmp_path / 'labeled.zarr')!r}
        target_store = {str(tmp_path / 'target.zarr')!r}
        epochs = 8
        lr = 1e-3
        head_lr = 3e-2
        batch_size = 8
        [teacher]
        name = "effnet"
        kind = "timm"
        model = "test_efficientnet"
        pretrained = {timm_ckpt!r}
        image_size = 32
    """))
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-extract")
    res = subprocess.run([exe, "finetune", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    losses = [float(line.rsplit(" ", 1)[1]) for line in res.stdout.splitlines() if line.startswith("fine-tune epoch")]
    assert len(losses) == 8 and losses[-1] < losses[0] * 0.7
    target = FeatureCache.open(str(tmp_path / "target.zarr"))
    info = target.teacher_info("effnet.finetuned")
    assert info["shape"] == [24, 2, 3] and info["spec"]["finetuned_on"] and target.is_complete and verify(target).ok
    logits = target.load("effnet.finetuned")
    assert np.mean(logits[:, 0].argmax(1) == target.labels) > 0.6  # it learned the (seen) task
    assert target.teacher_info("effnet")["fingerprint"] != info["fingerprint"]
