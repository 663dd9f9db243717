import numpy as np

from featcache.cache_tools import FeatureCache, MemoryStore
from featcache.cache_tools.reading import iter_chunk_shuffled, iter_teacher_batches


def test_every_row_once_with_matching_values():
    data = np.arange(1000 * 3).reshape(1000, 3)
    seen = []
    for ids, vals in iter_chunk_shuffled(lambda a, b: data[a:b], 1000, 64, 50, rng=np.random.default_rng(0),
                                         chunks_per_block=3, workers=2):
        np.testing.assert_array_equal(vals, data[ids])
        assert len(ids) <= 50
        seen.append(ids)
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == list(range(1000))
    assert not np.array_equal(seen, np.arange(1000))  # actually shuffled


def test_subset_of_rows_and_drop_last():
    data = np.arange(500)[:, None]
    rows = np.random.default_rng(3).choice(500, 123, replace=False)
    batches = list(iter_chunk_shuffled(lambda a, b: data[a:b], 500, 32, 20, rng=np.random.default_rng(1),
                                       rows=rows, drop_last=True))
    assert all(len(ids) == 20 for ids, _ in batches) and len(batches) == 6
    assert set(np.concatenate([i for i, _ in batches]).tolist()) <= set(rows.tolist())


def test_store_batches(fill, ids):
    cache = FeatureCache.create(MemoryStore(), sample_ids=ids, partition_rows=16)
    data = fill(cache)
    got = list(iter_teacher_batches(cache, "clip", 32, rng=np.random.default_rng(0)))
    for rows, feats in got:
        np.testing.assert_array_equal(feats, data["clip"][rows])
    assert sum(len(r) for r, _ in got) == 100
