"""Tiny real models saved as local checkpoints, and small real image/text data on disk."""

import json
import logging
import os
import shutil

import pytest
import torch

from featcache.plumbing.paths import resolve_path

from extract_helpers import BUCKET, MINILM, exe, make_images, one_thread_env, partitioned_config


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


# -- a real S3 server on loopback (moto's server mode), for test_s3.py and test_shards_remote.py --
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


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, timm_ckpt):
    """Images and the one-process store that split extractions (workers, Ray actors) must equal."""
    import subprocess
    root = tmp_path_factory.mktemp("split")
    images = make_images(root / "imgs", classes=3, per_class=8)
    ref = partitioned_config(root, images, timm_ckpt, root / "ref.zarr")
    res = subprocess.run([exe("featcache-extract"), ref], capture_output=True, text=True, env=one_thread_env())
    assert res.returncode == 0, res.stderr
    return images, timm_ckpt, str(root / "ref.zarr")
