"""The docs hold together: every relative link and #anchor of README.md and docs/*.md resolves, the
README stays short, the make targets and console-script flags it names exist, and every config key
of both stages is documented in docs/configuration.md."""

import contextlib
import dataclasses
import glob
import io
import os
import re
import typing

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README, *DOCS]
SUBCOMMANDS = {
    "featcache-extract": ("featcache.pipeline.cli", {"finetune"}),
    "featcache-train": ("featcache.train.cli", {"sweep", "compare", "probe", "tokt", "predict", "export"}),
    "featcache-cache": ("featcache.cache_tools.cli", {"info", "verify", "convert", "ls", "inputs", "subset",
                                                      "retrieve"}),
}


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code lines): fenced blocks and 4-space indented blocks are code."""
    prose, code, fenced, prev_blank = [], [], False, True
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or (line.startswith("    ") and (prev_blank or (code and code[-1] is not None))):
            code.append(line)
            prev_blank = False
            continue
        if code and code[-1] is not None:
            code.append(None)  # ends the indented block
        prose.append(line)
        prev_blank = not line.strip()
    return prose, [c for c in code if c is not None]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    found, counts = set(), {}
    for line in split_code(_text(path))[0]:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: str) -> list[str]:
    prose = "\n".join(split_code(_text(path))[0])
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_anchor_resolves(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(dest):
            bad.append(f"{target}: {os.path.relpath(dest, ROOT)} does not exist")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not bad, "\n".join(bad)


def test_the_slugs_are_githubs():
    assert slug("Overrides: keyword tables instead of `--set`") == "overrides-keyword-tables-instead-of---set"
    assert slug("The store: `FeatureCache`, `verify`, `convert`") == "the-store-featurecache-verify-convert"
    assert slug("### `[source]`".lstrip("# ")) == "source"
    assert slug("Stage 2: `train`") == "stage-2-train"
    assert slug("snake_case **bold**") == "snake_case-bold"


def test_every_doc_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0])) for t in links(README)}
    assert not [p for p in DOCS if p not in linked]


def test_readme_is_short():
    assert len(_text(README).splitlines()) <= 220


def _commands(path: str) -> list[str]:
    """Command lines the page shows: code lines (backslash continuations joined) and inline code."""
    prose, code = split_code(_text(path))
    lines, current = [], ""
    for line in code:
        current += " " + line.strip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        lines.append(current.strip().removeprefix("$ "))
        current = ""
    spans = re.findall(r"`([^`\n]+)`", "\n".join(prose))
    return lines + spans


def test_every_make_target_the_readme_names_exists():
    makefile = _text(os.path.join(ROOT, "Makefile"))
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, re.M))
    named = set()
    for line in _commands(README):
        if line.startswith("make "):
            for token in line.split("#")[0].split()[1:]:
                if token.startswith("-") or "=" in token:
                    continue
                named.add(token)
    assert {"demo", "setup", "test", "extract", "train", "evidence"} <= named
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"


def _names(text: str, flag: str) -> bool:
    """``--out`` is named by ``--out DIR`` but not by ``--output``."""
    return re.search(re.escape(flag) + r"(?![\w-])", text) is not None


def _help(command: str, sub: str | None) -> str:
    module, _ = SUBCOMMANDS[command]
    main = __import__(module, fromlist=["main"]).main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main([*([sub] if sub else []), "--help"])
    assert exc.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("page", [README, os.path.join(ROOT, "docs", "cli.md")], ids=os.path.basename)
def test_every_flag_a_page_names_is_in_that_commands_help(page):
    wanted: dict[tuple[str, str | None], set[str]] = {}
    for line in _commands(page):
        for m in re.finditer(r"(featcache-(?:extract|train|cache))\b([^#`|]*)", line):
            command, rest = m.group(1), m.group(2).split()
            sub = rest[0] if rest and rest[0] in SUBCOMMANDS[command][1] else None
            flags = {t.split("=")[0].strip("[]") for t in rest if t.lstrip("[").startswith("--")}
            wanted.setdefault((command, sub), set()).update(flags)
    assert ("featcache-train", "sweep") in wanted and "--grid" in wanted[("featcache-train", "sweep")]
    missing = []
    for (command, sub), flags in sorted(wanted.items(), key=str):
        text = _help(command, sub)
        missing += [f"{command} {sub or ''} {f}" for f in sorted(flags) if not _names(text, f)]
    assert not missing, "\n".join(missing)


def _keys(cls, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        out.append(prefix + f.name)
        for sub in ([tp] if dataclasses.is_dataclass(tp) else inner):
            out += _keys(sub, f"{prefix}{f.name}.")
    return out


def test_every_config_key_of_both_stages_is_documented():
    from featcache.pipeline.config import ExtractConfig
    from featcache.train.config import TrainConfig

    doc = _text(os.path.join(ROOT, "docs", "configuration.md"))
    named = set(re.findall(r"`\[*([\w.]+)\]*`", doc))  # `key`, `[section]`, `[[teachers]]`
    missing = [k for cls in (ExtractConfig, TrainConfig) for k in _keys(cls) if k.rsplit(".", 1)[-1] not in named]
    assert not missing, f"docs/configuration.md does not name: {missing}"


def test_docs_cli_names_every_flag_of_every_command():
    doc = _text(os.path.join(ROOT, "docs", "cli.md"))
    missing = []
    for command, (_, subs) in SUBCOMMANDS.items():
        for sub in [None, *sorted(subs)] if command != "featcache-cache" else sorted(subs):
            for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", _help(command, sub))) - {"--help"}:
                if not _names(doc, flag):
                    missing.append(f"{command} {sub or ''} {flag}")
    assert not missing, "docs/cli.md does not name:\n" + "\n".join(sorted(missing))
