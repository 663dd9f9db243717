"""The parquet source reads row groups, never whole tables, and keeps at most two of them."""

import io

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from featcache.rawdata import SourceError, parquet  # noqa: E402
from featcache.rawdata import parquet_tables  # noqa: E402


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _counting(calls: list, name: str, real):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)
    return wrapper


def test_every_row_loads_a_row_group_at_a_time_with_at_most_two_cached(tmp_path, monkeypatch):
    rows, group = 60, 3  # 20 row groups in each of two files
    for f in range(2):
        table = pa.table({"image": [_png(f * rows + i) for i in range(rows)], "label": [i % 4 for i in range(rows)]})
        pq.write_table(table, tmp_path / f"part-{f}.parquet", row_group_size=group)
    assert pq.ParquetFile(tmp_path / "part-0.parquet").metadata.num_row_groups == rows // group
    calls: list[str] = []
    monkeypatch.setattr(pq, "read_table", _counting(calls, "read_table", pq.read_table))
    monkeypatch.setattr(pq.ParquetFile, "read", _counting(calls, "ParquetFile.read", pq.ParquetFile.read))
    groups_read: list[tuple] = []
    real_group = pq.ParquetFile.read_row_group

    def read_row_group(self, i, columns=None, **kw):
        groups_read.append((i, tuple(columns or ())))
        return real_group(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    cached: list[int] = []
    real_cell = parquet_tables.ParquetRows.cell

    def cell(self, i, name):
        out = real_cell(self, i, name)
        cached.append(len(self._cache))
        return out

    monkeypatch.setattr(parquet_tables.ParquetRows, "cell", cell)
    src = parquet(str(tmp_path))
    assert len(src) == 2 * rows and groups_read == []  # open reads the label column in batches only
    for i in range(len(src)):  # in order: each row group is read once
        assert src.load(i).getpixel((0, 0)) == (i % 256,) * 3
    assert len(groups_read) == 2 * rows // group and {c for _, c in groups_read} == {("image",)}
    order = np.random.default_rng(0).permutation(len(src))
    for i in order:  # at random: groups are read again, the cache still holds two at most
        assert src.load(int(i)).getpixel((0, 0)) == (int(i) % 256,) * 3
    assert calls == [], calls  # never a whole table
    assert max(cached) == 2 and len(cached) == 4 * rows


def test_arrow_files_behind_a_url_are_a_source_error(tmp_path):
    import fsspec
    table = pa.table({"image": [_png(1)], "label": [0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    fsspec.filesystem("memory").pipe("/hf-arrow/train/data-00000-of-00001.arrow", sink.getvalue().to_pybytes())
    with pytest.raises(SourceError) as info:
        parquet("memory://hf-arrow/train")
    msg = str(info.value)
    assert msg.startswith("memory:///hf-arrow/train/data-00000-of-00001.arrow: save_to_disk .arrow files are read "
                          "memory-mapped from a local disk") and "cannot read Parquet" not in msg, msg


def test_image_cells_holding_only_a_path_read_that_path(tmp_path):
    """Hugging Face ``datasets`` with an Image() column cast from file paths: ``to_parquet`` keeps
    {"bytes": None, "path": <as given>}. The path is read: relative to the Parquet file, absolute,
    or a URL; a cell with bytes still decodes its bytes, and a missing file is that row's problem."""
    import fsspec
    import json
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    Image.fromarray(np.full((6, 5, 3), 10, np.uint8)).save(tmp_path / "data" / "imgs" / "rel.png")
    Image.fromarray(np.full((6, 5, 3), 20, np.uint8)).save(tmp_path / "abs.png")
    fsspec.filesystem("memory").pipe("/hf-paths/url.png", _png(30))
    cells = [{"bytes": None, "path": "imgs/rel.png"}, {"bytes": None, "path": str(tmp_path / "abs.png")},
             {"bytes": None, "path": "memory://hf-paths/url.png"}, {"bytes": _png(40), "path": "ignored.png"},
             {"bytes": None, "path": "imgs/gone.png"}]
    features = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}
    table = pa.table({"image": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": list(range(5))})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "data" / "train.parquet")
    src = parquet(str(tmp_path / "data" / "train.parquet"))
    assert [src.load(i).getpixel((0, 0)) for i in range(4)] == [(10,) * 3, (20,) * 3, (30,) * 3, (40,) * 3]
    from featcache.rawdata import InputError
    with pytest.raises(InputError, match=r"data/imgs/gone.png: cannot read \(No such file or directory\)"):
        src.load(4)
