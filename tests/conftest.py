import os

# A hub name must fail at once here instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def ray_address():
    """A small local Ray instance for one test module (loopback, no dashboard), shut down after it;
    the commands under test join it with --address. Skipped where Ray is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
