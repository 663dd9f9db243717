"""The built wheel, installed non-editable into a fresh venv, runs both stages from outside the checkout.

Nothing is downloaded: the wheel is built without build isolation, and the fresh venv sees
this test venv's site-packages through a .pth line (which does not run that folder's own
.pth files, so the editable install of the checkout stays out of it).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = ("plumbing", "rawdata", "cache_tools", "pipeline", "train")
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "stores", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache")


def source_modules() -> set[str]:
    found = set()
    for room in ROOMS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, room)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, REPO)
            found |= {f"featcache/{rel}/{f}".replace(os.sep, "/") for f in filenames if f.endswith(".py")}
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("src") / "featcache"
    shutil.copytree(REPO, src, ignore=SKIP)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(dist), str(src)], check=True)
    (whl,) = [p for p in os.listdir(dist) if p.endswith(".whl")]
    return str(dist / whl)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> str:
    """bin/ of a fresh venv holding the wheel (not editable)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "deps.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", "--disable-pip-version-check", wheel], check=True)
    return str(venv / "bin")


def test_wheel_lists_every_module_of_the_source_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    assert "featcache/pipeline/teachers/timm.py" in names


def _run(cmd: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def test_installed_wheel_extracts_and_trains_outside_the_checkout(installed, tmp_path):
    import timm
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([os.path.join(installed, "python"), "-c",
                  "import featcache.pipeline.extract as e, featcache.train.loop as l; print(e.__file__); print(l.__file__)"],
                 work).stdout.split()
    assert all(p.startswith(os.path.dirname(installed)) for p in where), where  # the wheel's copy, not the checkout

    rng = np.random.default_rng(0)
    for c in range(2):
        (work / "images" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            arr = (rng.integers(0, 60, (24, 24, 3)) + 150 * c).astype(np.uint8)
            Image.fromarray(arr).save(work / "images" / f"class{c}" / f"{i:02d}.png")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet").state_dict(), work / "teacher.pt")
    (work / "extract.toml").write_text("""
batch_size = 8
[source]
kind = "image_folder"
root = "images"
[[teachers]]
name = "tiny"
kind = "timm"
model = "test_efficientnet"
pretrained = "teacher.pt"
image_size = 32
[output]
store = "store.zarr"
partition_rows = 8
""")
    out = _run([os.path.join(installed, "featcache-extract"), "extract.toml"], work).stdout
    assert "complete" in out and "rows      24 (24 valid)" in out
    _run([os.path.join(installed, "featcache-cache"), "verify", "store.zarr"], work)
    (work / "train.toml").write_text("""
out_dir = "run"
[data]
store = "store.zarr"
test_store = "store.zarr"
val_fraction = 0.0
[student]
name = "small_cnn"
image_size = 24
width = 16
[method]
name = "aft"
[optim]
epochs = 2
batch_size = 8
""")
    _run([os.path.join(installed, "featcache-train"), "train.toml"], work)
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["method"] == "aft" and results["test_rows"] == 24 and results["epochs"] == 2
