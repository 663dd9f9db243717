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


# The store's format: the only modules that know its node paths, marker keys and backends' names.
FORMAT_MODULES = {os.path.join("cache_tools", f"{m}.py") for m in (
    "__init__", "cache", "root", "layout", "part", "part_kinds", "source_index", "store", "_zarr", "_hdf5", "_memory",
    "locate", "fingerprint", "errors")}
NODE_LITERALS = ("index/sample_id", "index/label", "index/valid", "views/params", "_partitions/", "/features",
                 "_index/", "featcache_teacher", "featcache_inputs", "featcache_index", "featcache_source_index")
WHOLE_LITERALS = {"_partitions", "_index", "teachers", "inputs", "index", "views", "source"}  # as a node: a group
BACKEND_NAMES = {"zarr", "hdf5", "memory"}


def _outside_the_format() -> list[str]:
    return [path for room in BELOW for path in _modules(room)
            if os.path.relpath(path, ROOT) not in FORMAT_MODULES]


def _is_node_argument(node: ast.AST, parents: dict) -> bool:
    """A group's name passed to a store call (``children("teachers")``, ``get_attrs("index")``)."""
    call = parents.get(node)
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in (
        "children", "get_attrs", "set_attrs", "read", "write", "array_meta", "node_doc", "doc_problem", "take",
        "create_array", "put_marker", "delete_marker")


def test_nothing_outside_the_format_reads_node_paths_or_private_helpers():
    """verify, convert, retrieve, inputs, the reader, extraction and training go through the parts
    (``FeatureCache``, ``part.py`` and ``part_kinds.py``): a node path, a marker key's prefix, or an underscore name
    imported from cache_tools anywhere else is a second copy of the schema, and copies drift."""
    wrong = []
    for path in _outside_the_format():
        rel = os.path.relpath(path, ROOT)
        tree = ast.parse(open(path).read(), path)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                wrong += [f"{rel}:{node.lineno} names the node {lit!r}" for lit in NODE_LITERALS if lit in node.value]
                if node.value in WHOLE_LITERALS and _is_node_argument(node, parents):
                    wrong.append(f"{rel}:{node.lineno} names the group {node.value!r}")
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                inside = (node.level and rel.startswith("cache_tools")) or module.startswith("featcache.cache_tools")
                private = [a.name for a in node.names if a.name.startswith("_")]
                if inside and (private or any(p.startswith("_") for p in module.split("."))):
                    wrong.append(f"{rel}:{node.lineno} imports private {module} {private}")
            elif isinstance(node, ast.Attribute) and node.attr in ("_take_rows", "_index", "_features_node"):
                wrong.append(f"{rel}:{node.lineno} uses the private {node.attr}")
    assert not wrong, "\n".join(wrong)


def test_callers_ask_backends_for_capabilities_not_their_names():
    """A backend says what it allows (``Store.capabilities``); comparing its name (``== "hdf5"``)
    outside the format would miss the next backend."""
    wrong = []
    for path in _outside_the_format():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Compare):
                names = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if set(names) & BACKEND_NAMES:
                    wrong.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} compares a backend's name")
    assert not wrong, "\n".join(wrong)
