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
