import dataclasses
from typing import Literal

import pytest

from featcache.plumbing.config import ConfigError, load_config


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
