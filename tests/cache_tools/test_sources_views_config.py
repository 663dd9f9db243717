import dataclasses
import json
import os
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from featcache.cache_tools.config import ConfigError, load_config
from featcache.cache_tools.sources import (InputError, SourceError, default_fashion_mnist_root, fashion_mnist,
                                           image_folder, manifest, open_source, text_categories)
from featcache.cache_tools.views import EVAL_VIEW, apply_view, sample_view


def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(path)


def test_image_folder_labels_ids_and_bad_inputs(tmp_path):
    _png(str(tmp_path / "cat" / "a.png"), 10)
    _png(str(tmp_path / "dog" / "b.png"), 200)
    (tmp_path / "dog" / "empty.png").write_bytes(b"")
    good = tmp_path / "dog" / "trunc.png"
    _png(str(good), 50)
    good.write_bytes(good.read_bytes()[:40])
    src = image_folder(str(tmp_path))
    assert src.sample_ids == ["cat/a.png", "dog/b.png", "dog/empty.png", "dog/trunc.png"]
    assert src.labels.tolist() == [0, 1, 1, 1] and src.classes == ["cat", "dog"]
    assert src.load(1).size == (10, 8) and src.load(1).mode == "RGB"
    for i in (2, 3):
        with pytest.raises(InputError):
            src.load(i)
    again = open_source(json.loads(json.dumps(src.describe())))
    assert again.sample_ids == src.sample_ids


def test_manifests_csv_and_jsonl(tmp_path):
    _png(str(tmp_path / "x.png"), 1)
    (tmp_path / "m.csv").write_text("path,label\nx.png,cat\nx2.png,dog\n")
    src = manifest(str(tmp_path / "m.csv"))
    assert src.labels.tolist() == [0, 1] and src.classes == ["cat", "dog"] and src.modality == "image"
    with pytest.raises(InputError):
        src.load(1)  # missing file: invalid row, not a crash
    (tmp_path / "t.jsonl").write_text('{"text": "hello", "label": 3}\n{"text": " "}\n')
    src = manifest(str(tmp_path / "t.jsonl"))
    assert src.modality == "text" and src.labels.tolist() == [3, -1] and src.load(0) == "hello"
    with pytest.raises(InputError):
        src.load(1)
    with pytest.raises(SourceError):
        manifest(str(tmp_path / "nope.csv"))


@pytest.mark.skipif(default_fashion_mnist_root() is None, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    src = fashion_mnist(split="test")
    assert len(src) == 10_000 and src.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert src.load(0).size == (28, 28)


@pytest.mark.skipif(not os.path.isdir("/usr/share/games/fortunes"), reason="fortunes not installed")
def test_fortunes_categories():
    src = text_categories("/usr/share/games/fortunes")
    assert len(src.classes) > 3 and len(src) > 1000
    assert all(not c.endswith((".dat", ".u8")) for c in src.classes)
    assert src.load(0).strip() and "%" != src.load(0).strip()


def test_views_replay_and_encoding():
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3))
    for _ in range(20):
        p = sample_view(rng, *img.size)
        assert 0 <= p[0] < p[2] <= 1 and 0 <= p[1] < p[3] <= 1 and p[4] in (0, 1)
        a, b = apply_view(img, p), apply_view(img, p.copy())
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(apply_view(img, EVAL_VIEW)), np.asarray(img))
    flipped = apply_view(img, np.array([0, 0, 1, 1, 1], np.float32))
    assert np.array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    name: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    epochs: int = 2
    tags: tuple[str, ...] = ()
    inner: Inner = Inner()

    def validate(self):
        return ["epochs: must be >= 1"] if self.epochs < 1 else []


def test_config_defaults_overrides_and_errors(tmp_path):
    assert load_config(Outer) == Outer()
    (tmp_path / "c.toml").write_text('epochs = 3\n[inner]\nlr = 1\n')
    cfg = load_config(Outer, str(tmp_path / "c.toml"), ["inner.name=b", "tags=['x']"])
    assert cfg == Outer(epochs=3, tags=("x",), inner=Inner(lr=1.0, name="b"))
    with pytest.raises(ConfigError, match=r"inner\.lrr: unknown key"):
        load_config(Outer, overrides=["inner.lrr=1"])
    with pytest.raises(ConfigError, match=r"inner\.name: 'c' is not one of"):
        load_config(Outer, overrides=["inner.name=c"])
    with pytest.raises(ConfigError, match="epochs: expected int"):
        load_config(Outer, overrides=["epochs=lots"])
    with pytest.raises(ConfigError, match="epochs: must be >= 1"):
        load_config(Outer, overrides=["epochs=0"])
