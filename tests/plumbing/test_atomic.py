"""The one atomic-write helper: unique temp names, nothing left behind, the old content intact on failure."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from featcache.plumbing import atomic


def test_write_kinds_round_trip(tmp_path):
    atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic.write_text(tmp_path / "a.txt", "héllo\n")
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [1.5, None]})
    atomic.write_with(tmp_path / "a.pt", lambda fh: torch.save({"w": torch.arange(3)}, fh))
    with atomic.atomic_open(tmp_path / "a.csv", "w", newline="") as fh:
        fh.write("x,y\r\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1.5, None], "b": 1}
    assert (tmp_path / "a.json").read_text().endswith("\n")
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.arange(3))
    assert (tmp_path / "a.csv").read_bytes() == b"x,y\r\n"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.csv", "a.json", "a.pt", "a.txt"]


def test_temp_names_unique_across_threads(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    seen: list[str] = []
    real = atomic.temp_name

    def spy(path):
        name = real(path)
        seen.append(name)
        return name

    monkeypatch.setattr(atomic, "temp_name", spy)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            barrier.wait()
            for j in range(20):
                atomic.write_json(target, {"writer": i, "round": j, "pad": "x" * 5000})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 16 * 20 and len(set(seen)) == len(seen)
    assert all(os.path.dirname(s) == str(tmp_path) and str(os.getpid()) in s for s in seen)
    doc = json.loads(target.read_text())  # whole: one writer's document, never a mix
    assert doc["round"] == 19 and doc["pad"] == "x" * 5000
    assert os.listdir(tmp_path) == ["out.json"]


def test_failure_midway_keeps_old_content_and_leaves_nothing(tmp_path):
    target = tmp_path / "results.json"
    atomic.write_text(target, "old\n")

    def half_then_fail(fh):
        fh.write(b"new and half")
        fh.flush()
        raise ZeroDivisionError("writer died")

    with pytest.raises(ZeroDivisionError):
        atomic.write_with(target, half_then_fail)
    with pytest.raises(TypeError):  # not JSON: fails before or while writing
        atomic.write_json(target, {"x": object()})
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(target, "w") as fh:
            fh.write("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["results.json"]


def test_failed_rename_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic.write_bytes(tmp_path / "x", b"1")
    assert len(synced) == (2 if os.name == "posix" else 1)


def test_missing_folder_is_an_error_not_a_temp_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic.write_text(tmp_path / "nope" / "a.txt", "x")
    assert os.listdir(tmp_path) == []


def test_exchange_swaps_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    if not atomic.exchange(str(a), str(b)):
        pytest.skip("no atomic exchange on this platform/filesystem")
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"
