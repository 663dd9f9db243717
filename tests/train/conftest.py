"""Small real stores for stage-2 tests: idx images on disk, features written with the store API."""

import pytest

from train_helpers import build_store


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """(train store, test store) of the synthetic task."""
    d = tmp_path_factory.mktemp("synth")
    train = build_store(str(d / "train.zarr"), str(d / "raw"), "train", 1200, seed=0)
    test = build_store(str(d / "test.zarr"), str(d / "raw"), "test", 600, seed=1)
    return train, test
