"""The Python API: keyword overrides are the CLI's ``--set`` lines (same validation, same one-line
error), importing it stays light, and every snippet of docs/python-api.md runs as written, against
tiny stand-ins for the demo configs (a small random timm teacher, synthetic Fashion-MNIST files)."""

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from featcache.pipeline import extract_config
from featcache.plumbing.api import as_overrides, progress_bars
from featcache.plumbing.config import ConfigError, load_config
from featcache.train import train_config
from featcache.train.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "python-api.md")
README = os.path.join(ROOT, "README.md")


def python_blocks(path: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", open(path, encoding="utf-8").read(), re.S | re.M)


def _write_idx(root, prefix, images, labels):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f"{prefix}-images-idx3-ubyte"), "wb") as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, *images.shape) + images.astype(np.uint8).tobytes())
    with open(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), "wb") as fh:
        fh.write(struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.astype(np.uint8).tobytes())


DEMO_VISION = """
batch_size = 100
[source]
kind = "fashion_mnist"
root = "data"
limit = 3000
[[teachers]]
name = "tiny"
kind = "timm"
model = "test_efficientnet"
pretrained = "teacher.pt"
image_size = 32
[output]
store = "stores/fashion_mnist/train.zarr"
partition_rows = 256
"""

DEMO_TRAIN = """
out_dir = "runs/train_vision"
[data]
store = "stores/fashion_mnist/train.zarr"
test_store = "stores/fashion_mnist/test.zarr"
label_budget = 10
unlabeled_per_batch = 32
[student]
name = "small_cnn"
image_size = 28
width = 16
[method]
name = "kd_pred"
[optim]
epochs = 2
batch_size = 32
"""


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The folder the docs' snippets run in: configs/demo_{vision,train}.toml under their real names."""
    import timm
    import torch

    d = tmp_path_factory.mktemp("demo")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 600), ("t10k", 200)):
        labels = rng.integers(0, 10, n)
        images = np.clip(labels[:, None, None] * 20 + rng.integers(0, 60, (n, 28, 28)), 0, 255)
        _write_idx(str(d / "data"), prefix, images, labels)
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet").state_dict(), d / "teacher.pt")
    (d / "configs").mkdir()
    (d / "configs" / "demo_vision.toml").write_text(DEMO_VISION)
    (d / "configs" / "demo_train.toml").write_text(DEMO_TRAIN)
    return d


def test_every_snippet_of_the_python_api_doc_runs(demo_dir, monkeypatch):
    """The README's snippet first (into its own stores/api), then the page's, top to bottom in one
    namespace."""
    blocks = [(README, b) for b in python_blocks(README)] + [(DOC, b) for b in python_blocks(DOC)]
    assert len(blocks) >= 6
    monkeypatch.chdir(demo_dir)
    ns: dict = {}
    for i, (page, block) in enumerate(blocks):
        exec(compile(block, f"{page} (python block {i + 1})", "exec"), ns)
    summary, result, table = ns["summary"], ns["result"], ns["table"]
    assert (summary.rows, summary.valid_rows, summary.teachers, summary.complete) == (500, 500, {"tiny": 256}, True)
    assert summary.rows_done == 500  # the page's store, not the README's (stores/api)
    assert os.path.isdir("stores/api/train.zarr") and os.path.isfile("runs/api/aft/results.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.rows = 1
    assert result.method == "aft" and result.results["config"]["method"]["beta"] == 1.0
    assert 0 <= result.test_accuracy <= 1 and len(result.history) == 2
    for path in (result.results_path, result.checkpoint_path, result.student_path, result.metrics_path,
                 result.config_path):
        assert os.path.isfile(path), path
    assert json.load(open(result.results_path))["test_accuracy"] == result.test_accuracy
    assert ns["stl"].out_dir == "runs/api_stl" and len(ns["stl"].history) == 1
    assert (ns["sweep"].runs, ns["sweep"].ran, ns["sweep"].failed) == (4, 4, ())
    assert [r["method"] for r in table.rows] == ["stl", "aft"] and all(r["seeds"] == 2 for r in table.rows)
    assert str(table).startswith("| method | test accuracy (mean ± std) |") and table.table.count("\n") == 3
    assert ns["best_run"].out_dir.startswith("runs/api_sweep/")
    assert len(ns["both"].rows) == 3 and os.path.isfile("runs/table.csv")  # the STL run of 1 epoch is its own row
    assert os.path.isfile("stores/fashion_mnist/train.h5") and os.path.isdir("stores/mine.zarr")


def test_keyword_tables_become_the_set_lines_of_the_command():
    assert as_overrides({"source": {"limit": 500}, "views": 4, "data": {"storage": {"profile": "b"}}}) == [
        "source.limit=500", "views=4", 'data.storage.profile="b"']
    assert as_overrides({"source": {}}) == []  # an empty table changes nothing
    odd = {"out_dir": 'runs/"q" é\n', "seed": 3, "amp": False,
           "data": {"teachers": ["a", "b"], "max_ram_gb": 1e-7, "storage": {"client_kwargs": {"region_name": "eu"}}},
           "optim": {"lr": 0.5, "grad_clip": float("inf")}}
    cfg = train_config(None, **odd)  # every value reads back as it was given
    assert (cfg.out_dir, cfg.seed, cfg.amp, cfg.data.teachers) == ('runs/"q" é\n', 3, False, ("a", "b"))
    assert cfg.data.max_ram_gb == 1e-7 and cfg.optim.lr == 0.5 and cfg.optim.grad_clip == float("inf")
    assert cfg.data.storage == {"client_kwargs": {"region_name": "eu"}}
    assert cfg == load_config(TrainConfig, None, [
        "out_dir='''runs/\"q\" é\n'''", "seed=3", "amp=false", 'data.teachers=["a","b"]', "data.max_ram_gb=1e-7",
        "data.storage.client_kwargs.region_name=eu", "optim.lr=0.5", "optim.grad_clip=inf"])
    numpy = train_config(None, seed=np.int64(2), optim={"lr": np.float64(0.1)}, data={"teachers": np.array(["a"])})
    assert (numpy.seed, numpy.optim.lr, numpy.data.teachers) == (2, 0.1, ("a",))  # e.g. a beta from np.linspace
    teachers = [{"name": "t1", "kind": "hf", "model": "m", "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}]
    ecfg = extract_config(None, teachers=teachers, views=2)
    assert ecfg.views == 2 and ecfg.teachers[0].name == "t1" and ecfg.teachers[0].std == (1.0, 1.0, 1.0)
    assert [t.name for t in extract_config(None, teachers=teachers * 1, index_only=True).teachers] == []


def test_a_wrong_key_is_the_commands_one_line_error(tmp_path, capsys):
    from featcache.pipeline.cli import main as extract_main
    from featcache.train.cli import main as train_main

    cfg = tmp_path / "c.toml"
    cfg.write_text("[optim]\nepochs = 1\n")
    for main, api, key, section in ((train_main, train_config, "optim.lrr", {"optim": {"lrr": 1}}),
                                    (extract_main, extract_config, "source.limt", {"source": {"limt": 5}})):
        assert main([str(cfg), "--set", f"{key}=1"]) == 2
        printed = capsys.readouterr().err.strip().split(": error: ", 1)[1]
        with pytest.raises(ConfigError) as exc:
            api(str(cfg), **section)
        assert str(exc.value) == printed and "\n" not in printed and key in printed
    with pytest.raises(ConfigError, match="optim.lr: None is not a config value"):
        train_config(None, optim={"lr": None})
    with pytest.raises(ConfigError, match=r"^bogus: unknown key"):
        train_config(None, bogus=1)
    with pytest.raises(ValueError, match="--teachers: nope not in the config"):
        extract_config(None, only_teachers=["nope"])


def test_an_engine_is_local_or_ray_and_its_options_need_it():
    from featcache.pipeline import extract_features
    from featcache.train import train_sweep

    with pytest.raises(ConfigError, match=r"^engine: expected 'local' or 'ray', got 'spark'$"):
        extract_features(None, engine="spark")
    with pytest.raises(ConfigError, match=r"^ray_workers: only with engine='ray'$"):
        extract_features(None, ray_workers=2)
    with pytest.raises(ConfigError, match=r"^address, ray_gpus: only with engine='ray'$"):
        train_sweep("c.toml", grid={"seed": [0]}, address="10.0.0.5:6379", ray_gpus=1)
    with pytest.raises(ConfigError, match=r"^jobs: engine='ray' places the runs itself"):
        train_sweep("c.toml", grid={"seed": [0]}, engine="ray", jobs=2)


def test_importing_the_api_stays_light_and_leaves_the_engine_modules_alone():
    script = textwrap.dedent("""
        import sys
        from featcache.train import train, train_sweep, compare_runs, TrainResult
        heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'timm', 'transformers')
                 or m.startswith('featcache.pipeline')]
        print('HEAVY', heavy)
        from featcache.pipeline import extract_features
        import featcache.train.sweep as s, featcache.train.compare as c, featcache.pipeline.extract as e
        print('MODULES', all(hasattr(m, '__file__') for m in (s, c, e)))
        import featcache.train as t, featcache.pipeline as p
        print('API', t.compare_runs is compare_runs and callable(t.train) and p.extract_features is extract_features
              and p.Summary is e.Summary)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout and "MODULES True" in res.stdout and "API True" in res.stdout


def test_progress_bars_on_demand():
    from tqdm import tqdm

    real = sys.stderr
    with progress_bars(None):
        assert sys.stderr is real
    for show in (True, False):
        with progress_bars(show):
            assert sys.stderr.isatty() is show
            bar = tqdm(total=1, disable=None, file=sys.stderr)
            assert bool(bar.disable) is (not show)  # tqdm keeps None when it draws
            bar.close()
        assert sys.stderr is real
