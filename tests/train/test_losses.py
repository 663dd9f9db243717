import torch

from featcache.train.losses import AFT, RKD, FeatureKD, PredictionKD, aft_regularizer


def reference_R(h, phi, s):
    """The design notes' formula, written out line by line."""
    t = phi * (1 / (1 + torch.exp(-s)))
    hc = h - h.mean(0)
    tc = t - t.mean(0)
    hn = hc / (torch.sqrt((hc ** 2).sum(1, keepdim=True)) + 1e-8)
    tn = tc / (torch.sqrt((tc ** 2).sum(1, keepdim=True)) + 1e-8)
    return torch.sqrt(((hn @ hn.T - tn @ tn.T) ** 2).mean() + 1e-8)


def test_aft_matches_formula_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        h = torch.randn(16, 7, generator=g, dtype=torch.float64, requires_grad=True)
        phi = torch.randn(16, 11, generator=g, dtype=torch.float64)
        s = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
        ours = aft_regularizer(h.float(), phi.float(), s.float())
        ref = reference_R(h, phi, s)
        assert torch.allclose(ours.double(), ref, atol=1e-5)
        gh, gs = torch.autograd.grad(ref, (h, s))
        h32, s32 = h.detach().float().requires_grad_(), s.detach().float().requires_grad_()
        oh, os_ = torch.autograd.grad(aft_regularizer(h32, phi.float(), s32), (h32, s32))
        assert torch.allclose(oh.double(), gh, atol=1e-4) and torch.allclose(os_.double(), gs, atol=1e-4)


def test_aft_zero_when_equal_and_scale_invariant():
    h = torch.randn(32, 10)
    s = torch.full((10,), 30.0)  # rho ~ 1: t = phi
    assert aft_regularizer(h, h.clone(), s).item() < 1e-3
    phi = torch.randn(32, 20)
    s = torch.randn(20)
    base = aft_regularizer(h, phi, s)
    assert torch.allclose(aft_regularizer(7.5 * h, phi, s), base, atol=1e-5)
    assert torch.allclose(aft_regularizer(h, 0.01 * phi, s), base, atol=1e-5)


def test_aft_learns_to_down_weight_noise_features():
    torch.manual_seed(0)
    signal = torch.randn(256, 4)
    h = signal @ torch.randn(4, 8)  # the student already sees the signal
    phi = torch.cat([signal, 5 * torch.randn(256, 12)], 1)  # 4 informative, 12 noise
    aft = AFT(16, beta=1.0)
    opt = torch.optim.Adam([aft.s], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        aft_regularizer(h, phi, aft.s).backward()
        opt.step()
    rho = torch.sigmoid(aft.s.detach())
    assert rho[:4].mean() > rho[4:].mean() + 0.3


def test_baseline_components_are_finite_and_backprop():
    h = torch.randn(12, 6, requires_grad=True)
    phi = torch.randn(12, 9)
    logits = torch.randn(12, 3, requires_grad=True)
    y = torch.randint(0, 3, (12,))
    probe = torch.nn.Linear(9, 3)
    for m in (AFT(9), FeatureKD(6, 9), RKD(), PredictionKD(probe)):
        parts = m(logits, h, phi, y)
        assert "ce" in parts and len(parts) >= 2
        total = sum(parts.values())
        assert torch.isfinite(total)
        total.backward()
    assert h.grad is not None and not probe.weight.requires_grad
