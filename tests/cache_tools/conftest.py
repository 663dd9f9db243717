import numpy as np
import pytest

from featcache.cache_tools import FeatureCache


def _fill(cache: FeatureCache, seed: int = 0, teachers: dict[str, int] | None = None,
         skip: set[int] = frozenset()) -> dict[str, np.ndarray]:
    """Write random features for every partition (except ``skip``); return what was written."""
    rng = np.random.default_rng(seed)
    teachers = teachers or {"clip": 24}
    shape_of = {}
    for name, dim in teachers.items():
        cache.add_teacher(name, dim, {"model_id": name, "library": "test"})
        shape_of[name] = tuple(cache.teacher_info(name)["shape"][1:])
    full = {name: rng.standard_normal((cache.rows, *shape)).astype(np.float16) for name, shape in shape_of.items()}
    valid = rng.random(cache.rows) > 0.1
    params = rng.random((cache.rows, cache.views, len(cache.view_param_names))).astype(np.float32)
    for p in range(cache.num_partitions):
        if p in skip:
            continue
        a, b = cache.partition_range(p)
        kwargs = {"view_params": params[a:b]} if cache.view_param_names else {}
        cache.write_partition(p, features={k: v[a:b] for k, v in full.items()}, valid=valid[a:b], **kwargs)
    return {**full, "_valid": valid, "_params": params}


@pytest.fixture
def ids():
    return [f"img/{i:04d}.png" for i in range(100)]


@pytest.fixture
def fill():
    return _fill
