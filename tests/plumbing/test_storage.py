"""Storage options: parsed like --set, layered (flags win), only for remote URLs, never in a saved config."""

import pytest

from featcache.plumbing import storage
from featcache.plumbing.config import ConfigError, load_config, to_dict


@pytest.fixture(autouse=True)
def fresh():
    storage.reset()
    yield
    storage.reset()


def test_options_parse_like_set_and_flags_win_over_config():
    opts = storage.parse_options(["endpoint_url=http://127.0.0.1:9000", "anon=true",
                                  "client_kwargs.region_name=eu-west-1"])
    assert opts == {"endpoint_url": "http://127.0.0.1:9000", "anon": True,
                    "client_kwargs": {"region_name": "eu-west-1"}}
    storage.set_options({"profile": "team-a", "anon": False})
    storage.set_options({"anon": True}, layer="flags")
    assert storage.options_for("s3://b/x.zarr") == {"profile": "team-a", "anon": True}
    assert storage.options_for("gs://b/x.zarr", {"profile": "mine"})["profile"] == "mine"
    assert storage.options_for("stores/x.zarr") is None and storage.options_for("file:///tmp/x") is None


def test_a_bad_option_is_one_line_without_its_value():
    with pytest.raises(ConfigError, match="--storage-option 'hunter2-secret': expected key=value"):
        storage.parse_options(["hunter2-secret"])
    with pytest.raises(ConfigError) as err:
        storage.parse_options(["=hunter2"])
    assert "hunter2" not in str(err.value)


def test_storage_tables_load_but_never_reach_a_saved_config():
    from featcache.pipeline.config import ExtractConfig
    from featcache.train.config import TrainConfig

    cfg = load_config(TrainConfig, data={"data": {"storage": {"key": "AKIA", "secret": "s3cr3t"}}})
    assert cfg.data.storage == {"key": "AKIA", "secret": "s3cr3t"}
    saved = to_dict(cfg)
    assert "storage" not in saved["data"] and "s3cr3t" not in repr(saved)
    assert load_config(TrainConfig, data=saved).data.storage == {}  # round trips (sweep, resume) drop them
    out = load_config(ExtractConfig, overrides=["output.storage.endpoint_url=http://h:9000"])
    assert out.output.storage == {"endpoint_url": "http://h:9000"} and "storage" not in to_dict(out)["output"]
    with pytest.raises(ConfigError, match="output.storage: expected a table"):
        load_config(ExtractConfig, overrides=["output.storage=3"])


def test_memory_urls_get_the_options_and_ls_walks_them(tmp_path):
    """memory:// is remote to fsspec: the same code path as s3://, without a server."""
    import numpy as np

    from featcache.cache_tools import FeatureCache
    from featcache.cache_tools.locate import find_stores

    base = f"memory://{tmp_path.name}/caches"
    for name in ("a.zarr", "deeper/b.zarr"):
        cache = FeatureCache.create(f"{base}/{name}", sample_ids=["x", "y"])
        cache.add_teacher("t", 4, {"model_id": "m"})
        cache.write_partition(0, features={"t": np.ones((2, 4))}, valid=np.ones(2, bool))
    assert find_stores(base) == [f"memory://{tmp_path.name}/caches/a.zarr",
                                 f"memory://{tmp_path.name}/caches/deeper/b.zarr"]
    assert storage.exists(f"{base}/a.zarr") and not storage.exists(f"{base}/none.zarr")
    with pytest.raises(NotADirectoryError, match="no such bucket or prefix"):
        find_stores(f"memory://{tmp_path.name}/nothing")


def test_missing_credentials_are_one_line(monkeypatch, capsys):
    pytest.importorskip("s3fs")
    from featcache.cache_tools.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["ls", "s3://no-such-bucket/caches", "--storage-option", "endpoint_url=http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err == "featcache-cache: error: Unable to locate credentials\n"
