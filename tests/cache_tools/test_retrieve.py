"""Query-balanced retrieval on hand-made embeddings where the right answer is known."""

import json

import numpy as np

from featcache.cache_tools import FeatureCache, MemoryStore
from featcache.cache_tools.retrieve import assign_quota, random_transfer, retrieve, stream_topk, write_transfer_store


def store(feats, labels, ids, valid=None, partition_rows=4):
    cache = FeatureCache.create(MemoryStore(), sample_ids=ids, labels=labels, partition_rows=partition_rows,
                                source={"kind": "image_folder", "root": "/pool"})
    cache.add_teacher("t", feats.shape[1], {"m": 1}, dtype="float32")
    valid = np.ones(len(ids), bool) if valid is None else valid
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"t": feats[a:b]}, valid=valid[a:b])
    return cache


def unit(angle_deg):
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a)], np.float32)


def test_quota_dedup_fill_and_exclusions():
    # queries at 0 and 10 degrees; pool points at known angles
    q = store(np.stack([unit(0), unit(10)]), [0, 1], ["q0", "q1"])
    angles = [1, 2, 3, 9, 11, 40, 80, 0, 5]
    ids = [f"p{i}" for i in range(8)] + ["q0"]  # the last pool row is query q0 itself
    feats = np.stack([unit(a) for a in angles])
    feats[7] = unit(10) * 3  # an exact duplicate (same direction) of query q1
    valid = np.ones(9, bool)
    valid[2] = False  # undecodable pool row (3 degrees)
    pool = store(feats, [-1] * 9, ids, valid)
    got = retrieve(q, pool, "t", per_query=2)
    by_query = {int(r): int(qq) for r, qq in zip(got.rows, got.query)}
    # q0 (0 deg) takes 1 and 2 degrees; q1 (10 deg) takes 11 and 9: nobody takes 3 (invalid),
    # row 7 (duplicate of q1) or row 8 (q0 itself)
    assert by_query == {0: 0, 1: 0, 3: 1, 4: 1}
    # a row claimed by both fills the other quota from the next neighbour
    q2 = store(np.stack([unit(0), unit(1)]), [0, 1], ["a", "b"])
    pool2 = store(np.stack([unit(a) for a in (0.5, 2, 30, 60)]), [-1] * 4, ["x", "y", "z", "w"])
    got2 = retrieve(q2, pool2, "t", per_query=1)
    assert sorted(got2.rows.tolist()) == [0, 1] and len(set(got2.rows.tolist())) == 2
    assert got2.short_queries == 0


def test_budget_caps_and_balances():
    rng = np.random.default_rng(0)
    q = store(rng.standard_normal((5, 8)).astype(np.float32), [0, 1, 2, 3, 4], [f"q{i}" for i in range(5)])
    pool = store(rng.standard_normal((200, 8)).astype(np.float32), [-1] * 200, [f"p{i}" for i in range(200)],
                 partition_rows=16)
    got = retrieve(q, pool, "t", per_query=10, budget=23)
    counts = np.bincount(got.query, minlength=5)
    assert len(got.rows) == 23 and counts.max() - counts.min() <= 1
    assert len(set(got.rows.tolist())) == 23


def test_streaming_topk_equals_brute_force():
    rng = np.random.default_rng(1)
    qf = rng.standard_normal((7, 16)).astype(np.float32)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    pf = rng.standard_normal((301, 16)).astype(np.float32)
    pool = store(pf, [-1] * 301, [f"p{i}" for i in range(301)], partition_rows=32)
    idx, sims = stream_topk(qf, pool, "t", 12, set())
    brute = qf @ (pf / np.linalg.norm(pf, axis=1, keepdims=True)).T
    want = np.argsort(-brute, axis=1)[:, :12]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sims, np.take_along_axis(brute, want, 1), rtol=1e-5)


def test_assign_quota_round_robin_is_balanced():
    idx = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    sims = np.ones((2, 4), np.float32)
    got = assign_quota(idx, sims, k=2)
    assert sorted(got.rows.tolist()) == [0, 1, 2, 3] and np.bincount(got.query).tolist() == [2, 2]


def test_transfer_store_refers_to_pool_rows(tmp_path):
    rng = np.random.default_rng(2)
    q = store(rng.standard_normal((3, 4)).astype(np.float32), [0, 1, 2], ["q0", "q1", "q2"])
    pf = rng.standard_normal((40, 4)).astype(np.float32)
    pool = store(pf, [-1] * 40, [f"p{i}" for i in range(40)], partition_rows=8)
    got = retrieve(q, pool, "t", per_query=3)
    out = str(tmp_path / "transfer.zarr")
    t = write_transfer_store(out, pool, got, {"teacher": "t", "per_query": 3}, queries=q)
    assert t.rows == 9 and (t.labels == -1).all() and t.split == "transfer" and t.is_complete
    assert t.sample_ids.tolist() == [f"p{i}" for i in got.rows]
    np.testing.assert_array_equal(t.load("t"), pf[got.rows])
    assert t.source["kind"] == "subset" and t.source["rows"] == got.rows.tolist()
    assert t.meta["retrieval"]["per_query"] == 3
    lines = [json.loads(x) for x in open(out + ".manifest.jsonl")]
    assert sum(len(x["pool_rows"]) for x in lines) == 9 and {x["query_id"] for x in lines} == {"q0", "q1", "q2"}
    rnd = random_transfer(q, pool, 9, seed=0)
    assert len(rnd.rows) == 9 and len(set(rnd.rows.tolist())) == 9
