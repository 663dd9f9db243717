"""Every shipped config loads against its schema: a typo in configs/ fails here, not in `make demo`."""

import glob
import os

import pytest

from featcache.plumbing.config import load_config
from featcache.pipeline.config import ExtractConfig
from featcache.pipeline.finetune import FinetuneConfig
from featcache.train.config import TrainConfig
from featcache.train.tokt import ToktConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = {"demo_vision.toml": ExtractConfig, "demo_text.toml": ExtractConfig, "fortunes.toml": ExtractConfig,
           "demo_train.toml": TrainConfig, "demo_text_train.toml": TrainConfig, "demo_tokt.toml": ToktConfig,
           "demo_finetune.toml": FinetuneConfig, "paper_text_train.toml": TrainConfig,
           "paper_vision_train.toml": TrainConfig}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_shipped_config_loads(name):
    load_config(SCHEMAS[name], os.path.join(ROOT, "configs", name))


def test_every_config_is_covered():
    shipped = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.toml"))}
    assert shipped <= set(SCHEMAS)


def test_demo_teachers_and_student_weights_resolve():
    """The pkg: paths of the demo point at files the demo extra installs."""
    from featcache.plumbing.paths import resolve_path

    cfg = load_config(TrainConfig, os.path.join(ROOT, "configs", "demo_train.toml"))
    extract = load_config(ExtractConfig, os.path.join(ROOT, "configs", "demo_vision.toml"))
    paths = [cfg.student.checkpoint] + [t.pretrained for t in extract.teachers]
    for ref in paths:
        try:
            assert os.path.isfile(resolve_path(ref))
        except FileNotFoundError as exc:
            if "is not installed" in str(exc):
                pytest.skip(str(exc))
            raise
