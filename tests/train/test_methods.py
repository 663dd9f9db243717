"""The method registry: what each built-in method declares, and a method added from outside the
package (a toy, registered in this module) reaching config validation, the sweep's run hash,
compare's labels and the loop without any other file edited."""

import json
from dataclasses import dataclass

import pytest
import torch

from featcache.plumbing.config import ConfigError, load_config, to_dict
from featcache.train.compare import summarize
from featcache.train.config import TrainConfig
from featcache.train.losses import MethodLoss, labeled_ce
from featcache.train.methods import BuildContext, Method, from_config, get, lookup, names, register, unregister
from featcache.train.sweep import config_hash, parse_axis, plan

from train_helpers import write_config  # noqa: E402


class LogitPenalty(MethodLoss):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits, h, phi, y):
        return {"ce": labeled_ce(logits, y), "toy": self.scale * logits.float().pow(2).mean()}


@dataclass(frozen=True)
class ToyMethod(Method):
    """Cross-entropy plus scale * mean squared logit: a method without teacher features."""

    name = "toy_l2"
    scale: float = 0.1

    def validate(self) -> list[str]:
        return [] if self.scale >= 0 else ["scale: must be >= 0"]

    def build(self, ctx: BuildContext) -> LogitPenalty:
        return LogitPenalty(self.scale)


@pytest.fixture
def toy():
    register(ToyMethod)
    yield ToyMethod
    unregister(ToyMethod.name)


def test_builtin_methods_declare_params_and_needs():
    assert {n: get(n).params() for n in names()} == {
        "stl": (), "aft": ("beta", "prior_lr", "prior_travel"), "kd_feat": ("kd_beta",), "rkd": ("rkd_distance", "rkd_angle"),
        "kd_pred": ("temperature", "alpha"), "distill_logits": ("temperature",), "distill_features": ("kd_beta",)}
    assert {n for n in names() if not get(n).needs_features} == {"stl"}
    assert {n for n in names() if get(n).needs_probe} == {"kd_pred"}
    assert {n for n in names() if get(n).unlabeled} == {"distill_logits", "distill_features"}
    defaults = to_dict(TrainConfig())["method"]
    assert defaults == {"name": "aft", "beta": 10.0, "prior_lr": 1e-2, "prior_travel": 10.0, "kd_beta": 1.0, "rkd_distance": 25.0,
                        "rkd_angle": 50.0, "temperature": 4.0, "alpha": 0.5}


@pytest.mark.parametrize("name,parts", [
    ("stl", {"ce"}), ("aft", {"ce", "aft"}), ("kd_feat", {"ce", "kd_feat"}), ("rkd", {"ce", "rkd_dist", "rkd_angle"}),
    ("kd_pred", {"ce", "kd"}), ("distill_logits", {"kd"}), ("distill_features", {"kd_feat"})])
def test_builtin_methods_build_their_loss_from_the_config(name, parts):
    cfg = load_config(TrainConfig, overrides=[f"method.name={name}", "method.beta=3", "method.kd_beta=0.25"])
    method = from_config(cfg.method)
    loss = method.build(BuildContext(d_h=6, d_phi=3, num_classes=3, probe=torch.nn.Linear(3, 3)))
    out = loss(torch.randn(8, 3), torch.randn(8, 6), torch.randn(8, 3), torch.randint(0, 3, (8,)))
    assert set(out) == parts and all(torch.isfinite(v) for v in out.values())
    if name == "aft":
        assert loss.beta == 3.0 and loss.s.shape == (3,)
    if name in ("kd_feat", "distill_features"):
        assert loss.beta == 0.25


def test_run_hash_of_builtin_methods_is_unchanged():
    """Hashes computed by the side-table code this registry replaced: old sweep directories stay found."""
    def cfg(name):
        return {"out_dir": "runs/x", "seed": 1,
                "data": {"store": "s.zarr", "teachers": ["t"], "label_budget": 25, "loader_workers": 2},
                "student": {"name": "small_cnn", "resize_filter": "bilinear"},
                "method": {"name": name, "beta": 1.0, "prior_lr": 0.01, "kd_beta": 1.0, "rkd_distance": 25.0,
                           "rkd_angle": 50.0, "temperature": 4.0, "alpha": 0.5},
                "optim": {"lr": 0.001}}
    assert {n: config_hash(cfg(n)) for n in ("stl", "aft", "kd_pred", "distill_logits")} == {
        "stl": "caf945ff07", "aft": "ed4173659b", "kd_pred": "b6dcd4853c", "distill_logits": "d788221bda"}


def test_toy_method_is_validated_by_the_config(toy):
    cfg = load_config(TrainConfig, overrides=["method.name=toy_l2", "method.scale=0.5"])
    assert cfg.method.name == "toy_l2" and cfg.method.scale == 0.5
    assert from_config(cfg.method) == ToyMethod(scale=0.5)
    with pytest.raises(ConfigError, match=r"method\.scale: must be >= 0"):
        load_config(TrainConfig, overrides=["method.name=toy_l2", "method.scale=-1"])
    with pytest.raises(ConfigError, match=r"method\.scale: expected float"):
        load_config(TrainConfig, overrides=["method.scale=fast"])
    # another method's parameter is accepted (one config serves every method), and checked
    assert load_config(TrainConfig, overrides=["method.name=aft", "method.scale=2"]).method.name == "aft"
    with pytest.raises(ConfigError, match=r"method\.scale: must be >= 0"):
        load_config(TrainConfig, overrides=["method.name=aft", "method.scale=-2"])
    from featcache.train.tokt import ToktConfig
    assert load_config(ToktConfig, overrides=["tokt.finetune_method=toy_l2"]).tokt.finetune_method == "toy_l2"


def test_unregistered_method_is_unknown_again(toy):
    unregister(toy.name)
    assert lookup("toy_l2") is None
    with pytest.raises(ConfigError, match=r"method\.name: 'toy_l2' is not one of"):
        load_config(TrainConfig, overrides=["method.name=toy_l2"])
    with pytest.raises(ConfigError, match=r"method\.scale: unknown key"):
        load_config(TrainConfig, overrides=["method.scale=1"])
    register(toy)  # the fixture takes it out again


def test_toy_method_in_sweep_hash_and_plan(toy, tmp_path):
    cfg = write_config(tmp_path / "c.toml", "train.zarr", "test.zarr", str(tmp_path / "runs"), epochs=1, batch_size=32)
    axis = parse_axis("toy_l2.scale=0,0.5")
    assert (axis.key, axis.only_method) == ("method.scale", "toy_l2")
    runs = plan(cfg, [], [parse_axis("method=stl,toy_l2,aft"), axis])
    assert sorted(r.name.split("-")[0] for r in runs) == ["aft", "stl", "toy_l2", "toy_l2"]

    def name(*overrides: str) -> str:
        (run,) = plan(cfg, list(overrides), [parse_axis("method=toy_l2")])
        return run.name

    # its own parameter renames its runs; another method's, or a teacher it never reads, does not
    assert name("method.scale=0.3") != name() == name("method.beta=3") == name('data.teachers=["t"]')
    aft = load_config(TrainConfig, overrides=["method.name=aft"])
    aft_scaled = load_config(TrainConfig, overrides=["method.name=aft", "method.scale=0.3"])
    assert config_hash(to_dict(aft)) == config_hash(to_dict(aft_scaled))


def test_toy_method_in_compare_labels(toy, tmp_path):
    def fake(name: str, method: str, seed: int, acc: float, teachers: list, **params) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "method": method, "test_accuracy": acc, "val_accuracy": acc, "wall_seconds": 1.0,
            "config": {"seed": seed, "out_dir": str(d), "method": {"name": method, "scale": 0.1, "beta": 10.0, **params},
                       "data": {"teachers": teachers}}}))

    fake("s0", "stl", 0, 0.70, [])
    fake("s1", "stl", 1, 0.80, ["t"])
    fake("y0", "toy_l2", 0, 0.80, [], scale=0.1)
    fake("y1", "toy_l2", 0, 0.90, ["t"], scale=0.5)
    fake("a0", "aft", 0, 0.85, ["t"], scale=0.5)
    table = {r["method"]: r for r in summarize(str(tmp_path))}
    # the toy's scale splits its runs only; teachers split neither its runs nor STL's (neither reads them)
    assert set(table) == {"stl", "toy_l2 scale=0.1", "toy_l2 scale=0.5", "aft teachers=t"}
    assert table["toy_l2 scale=0.5"]["error_vs_stl"] == pytest.approx(0.10 / 0.25)


def test_toy_method_trains(toy, synth, tmp_path):
    train, test = synth
    cfg = load_config(TrainConfig, data={
        "out_dir": str(tmp_path / "run"), "data": {"store": train, "test_store": test, "label_budget": 10},
        "student": {"image_size": 28, "width": 16}, "method": {"name": "toy_l2", "scale": 0.5},
        "optim": {"epochs": 1, "batch_size": 20}})
    from featcache.train.loop import run
    res = run(cfg, log=lambda _m: None)
    assert res["method"] == "toy_l2" and set(res["final_losses"]) == {"ce", "toy"}
    assert res["store"]["teachers"] == {}  # no teacher features read


def test_registry_refuses_clashes():
    before = names()

    @dataclass(frozen=True)
    class Clash(Method):
        name = "clash"
        beta: float = 1.0  # aft's beta defaults to 10.0

    @dataclass(frozen=True)
    class ProbeOnly(Method):
        name = "probe_only"
        needs_probe = True

    class NotADataclass(Method):
        name = "plain"

    @dataclass(frozen=True)
    class NoDefault(Method):
        name = "no_default"
        gamma: float

    @dataclass(frozen=True)
    class Again(Method):
        name = "aft"

    for cls in (Clash, ProbeOnly, NotADataclass, NoDefault):
        with pytest.raises(TypeError):
            register(cls)
    with pytest.raises(ValueError, match="already registered"):
        register(Again)
    assert names() == before
