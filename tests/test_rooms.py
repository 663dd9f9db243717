"""The rooms and the one direction between them, read from every module's imports (including
imports inside functions), so a lazy import cannot hide an arrow pointing the wrong way.

    plumbing  <-  rawdata  <-  cache_tools  <-  pipeline
                                           <-  train      (train never imports pipeline)

train builds students from timm and transformers in one module only (library_students.py).
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BELOW = {
    "plumbing": set(),
    "rawdata": {"plumbing"},
    "cache_tools": {"plumbing", "rawdata"},
    "pipeline": {"plumbing", "rawdata", "cache_tools"},
    "train": {"plumbing", "rawdata", "cache_tools"},
}
TEACHER_LIBRARIES = {"open_clip", "timm", "transformers"}
# students from libraries: one module of train builds timm and Hugging Face networks as students;
# it imports no teacher code (pipeline) and never open_clip
STUDENT_LIBRARIES_MODULE = os.path.join("train", "library_students.py")
STUDENT_LIBRARIES = {"timm", "transformers"}
MODEL_FREE = {"plumbing", "rawdata", "cache_tools"}  # may use torch only as plumbing (distributed)


def _modules(room: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(ROOT, room))
                  for f in files if f.endswith(".py"))


def _imports(path: str, room: str) -> set[str]:
    """Absolute names of everything ``path`` imports; relative imports resolved within the room."""
    package = os.path.relpath(os.path.dirname(path), ROOT).split(os.sep)
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                found.add(".".join(["featcache", *base, *([node.module] if node.module else [])]))
            else:
                found.add(node.module)
    return found


def _room_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "featcache" and len(parts) > 1 else None


@pytest.mark.parametrize("room", sorted(BELOW))
def test_every_arrow_points_down(room):
    wrong = []
    for path in _modules(room):
        for name in _imports(path, room):
            other = _room_of(name)
            if other and other != room and other not in BELOW[room]:
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {name}")
            library = name.split(".")[0]
            if library in TEACHER_LIBRARIES and room != "pipeline" and not (
                    os.path.relpath(path, ROOT) == STUDENT_LIBRARIES_MODULE and library in STUDENT_LIBRARIES):
                wrong.append(f"{os.path.relpath(path, ROOT)} imports the teacher library {name}")
    assert not wrong, "\n".join(wrong)


def test_every_room_is_a_package_in_the_wheel():
    setup = open(os.path.join(ROOT, "setup.py")).read()
    for room in BELOW:
        assert os.path.isfile(os.path.join(ROOT, room, "__init__.py"))
        assert f'"{room}"' in setup


@pytest.mark.parametrize("room", sorted(MODEL_FREE))
def test_store_inputs_and_plumbing_know_no_models(room):
    """torch is plumbing's (process groups) and torchvision's dataset download rawdata's; no
    nn.Module, no optimizer, no teacher anywhere below the stages."""
    for path in _modules(room):
        text = open(path).read()
        assert "torch.nn" not in text and "torch.optim" not in text, path
