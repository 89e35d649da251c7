"""The package layout shows the architecture: one folder per concern, imports only downward.

Each rule here is what a package's ``__init__`` docstring promises; a new import that
breaks one fails this test instead of quietly tangling the layers.  `scores` (PSNR, SSIM,
CLIP score) sits between `model` and the two packages that both score images, `train`
(evaluation during distillation) and `measure` (the Compare tab, `bksdm eval`), which may
not import each other.  `measure` may import `jobs`: an evaluation run as a background job
writes the runner's event file.

The documents the code, tests, benchmarks, build files and docs cite are in the repository
too: a reader who follows "docs/facts.md §9" or a link in the README finds what it names.
"""
import ast
import re
from pathlib import Path
from typing import Iterator, List, Optional, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bksdm_ext"
TOP_LEVEL = {"__init__", "__main__", "demo", "errors", "settings",
             "ldm_unet"}  # ldm_unet: the yaml target students on disk name, re-exported
MAY_IMPORT = {  # subpackage -> the bksdm_ext parts it may import (__init__: __version__)
    "model": {"__init__", "errors", "settings"},
    "jobs": {"__init__", "errors", "settings"},
    "scores": {"__init__", "errors", "settings", "model"},
    "train": {"__init__", "errors", "settings", "model", "jobs", "scores"},
    "measure": {"__init__", "errors", "settings", "model", "jobs", "scores"},
    "cli": {"__init__", "errors", "settings", "model", "jobs", "scores", "train", "measure",
            "demo"},
}
# A1111's `modules`, and what Forge adds beside it: all count as "the WebUI" ('modules').
WEBUI_PACKAGES = {"modules", "modules_forge", "backend", "huggingface_guess"}


def _imported_parts(path: Path) -> Set[str]:
    """The top-level bksdm_ext parts (errors, model, ...) a module imports, plus 'modules'
    when it imports A1111 or Forge."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = target[1:] or [alias.name for alias in node.names]
                parts.update(names[:1] if len(target) > 1 else
                             ["__init__" if n.startswith("__") else n for n in names])
            elif node.module:
                first, *rest = node.module.split(".")
                if first == "bksdm_ext" and rest:
                    parts.add(rest[0])
                elif first in WEBUI_PACKAGES:
                    parts.add("modules")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                first, *rest = alias.name.split(".")
                if first == "bksdm_ext" and rest:
                    parts.add(rest[0])
                elif first in WEBUI_PACKAGES:
                    parts.add("modules")
    return parts


def test_the_top_level_holds_only_the_entry_points_and_compatibility_modules():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == TOP_LEVEL


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_downward(package):
    own = {package}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        wrong = _imported_parts(path) - MAY_IMPORT[package] - own
        assert not wrong, "%s imports %s" % (path.relative_to(PACKAGE.parent), sorted(wrong))


def test_settings_import_only_the_error_types():
    """Every package declares its settings with `bksdm_ext.settings`, so it sits below them
    all, beside `errors`."""
    assert _imported_parts(PACKAGE / "settings.py") == {"errors"}


def test_each_command_family_reads_as_one_short_module():
    """cli/: one module per command family, its parsers, runs and output side by side; the
    work itself is done below (model/, train/, measure/, jobs/)."""
    modules = sorted((PACKAGE / "cli").glob("*.py"))
    assert len(modules) > 1
    for path in modules:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) <= 250, "cli/%s has %d lines" % (path.name, len(lines))
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.body[-1].end_lineno - node.lineno + 1
                assert length <= 60, "cli/%s: %s has %d lines" % (path.name, node.name, length)


def test_only_the_webui_package_imports_a1111():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "webui" not in path.relative_to(PACKAGE).parts:
            assert "modules" not in _imported_parts(path), path


def _webui_modules_imported(path: Path) -> Set[str]:
    """The bksdm_ext.webui modules a webui module imports (``from . import x``, ``from .x import y``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module.split(".")[0]] if node.module else
                         [alias.name for alias in node.names])
    return names


def test_tabs_never_import_tabs():
    """A sub-tab (``*_tab``) is built only by ui.py: what two tabs share lives in a webui
    module that is not a tab, so no tab depends on another through any chain."""
    webui = PACKAGE / "webui"
    for path in sorted(webui.glob("*.py")):
        if path.stem == "ui":
            continue
        tabs = {name for name in _webui_modules_imported(path) if name.endswith("_tab")}
        assert not tabs, "webui/%s imports the tab(s) %s" % (path.name, sorted(tabs))


def test_the_tab_rule_sees_a_tab_import(tmp_path):
    module = tmp_path / "x_tab.py"
    module.write_text("from . import a1111, latency_tab\nfrom .convert_tab import LABEL_OF\n")
    assert {n for n in _webui_modules_imported(module) if n.endswith("_tab")} == {
        "latency_tab", "convert_tab"}


# -- cited documents ---------------------------------------------------------------------

REPO = PACKAGE.parent
# Where citations live: the code, the tests, the benchmarks, the build and CI files, the docs.
CITING = ["bksdm_ext", "scripts", "install.py", "tests", "bench", "Makefile", ".ci", "docs",
          "README.md", "pyproject.toml", "javascript"]
CITING_SUFFIXES = {".py", ".md", ".toml", ".js", ".css"}
# A document and the sections cited in it ("docs/facts.md §6b", "facts.md) §1-4, §7"); the
# document may also be a bare capitalised name, as the old citations of a facts file outside
# the repository were, which then resolves to nothing.
_SECTIONS = r"§\s*\d\w*(?:\s*[-–]\s*§?\s*\d\w*)?"  # §6b, §1-4, §1–§4; not §N
SECTION_CITATION = re.compile(r"(?<![\w./-])([\w./-]+\.(?:md|txt)|[A-Z][A-Z0-9_]+)[`)\]]*\s+"
                              r"(%s(?:(?:\s*,\s*|\s+and\s+)%s)*)" % (_SECTIONS, _SECTIONS))
SECTION_ID = re.compile(r"(?:§|[-–]\s*§?)\s*(\d\w*)")
# A path ending in .md or .txt (not .txt.gz), and a Markdown link's target.
DOCUMENT_PATH = re.compile(r"(?<![\w./-])([\w./-]*[\w-]\.(?:md|txt))(?![\w-])(?!\.\w)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def _citing_files() -> Iterator[Path]:
    for name in CITING:
        root = REPO / name
        if root.is_file():
            yield root
            continue
        for path in sorted(root.rglob("*")):
            folders = path.relative_to(root).parts[:-1]
            if (path.is_file() and (path.suffix in CITING_SUFFIXES or name == ".ci")
                    and not any(f.startswith(".") or f == "__pycache__" for f in folders)):
                yield path


def _outside_fences(text: str) -> str:
    """Markdown without its fenced code blocks (a ``# comment`` there is no heading)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def _headings(markdown: str) -> List[str]:
    return [m.group(1) for m in map(HEADING.match, _outside_fences(markdown).splitlines()) if m]


def _sections(markdown: str) -> Set[str]:
    """The numbered sections of a Markdown document: "## 6b. Title" is section 6b."""
    return {m.group(1) for m in (re.match(r"(\w+)\.\s", h) for h in _headings(markdown)) if m}


def _anchors(markdown: str) -> Set[str]:
    """GitHub's heading anchors: a link's text only, lower case, punctuation dropped, spaces
    to hyphens, and -1, -2 ... after repeated headings."""
    anchors: Set[str] = set()
    for heading in _headings(markdown):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        unique, n = slug, 0
        while unique in anchors:
            n += 1
            unique = "%s-%d" % (slug, n)
        anchors.add(unique)
    return anchors


def _resolve(cited: str, citing: Path) -> Optional[Path]:
    """The repository file or folder a citation names, seen from the citing file's folder or
    from the repository root; None when there is none."""
    for base in (citing.parent, REPO):
        path = (base / cited).resolve()
        if path.exists() and REPO in path.parents:
            return path
    return None


def _is_repository_path(cited: str) -> bool:
    """A path into this repository (docs/..., ../bench/...) or a capitalised document name
    (README.md); a bare lower-case name is an example file (prompts.txt, image.txt)."""
    if "/" not in cited:
        return re.match(r"[A-Z][A-Z0-9_-]*\.(md|txt)$", cited) is not None
    first = cited.split("/")[0]
    return first in (".", "..") or (first != "" and (REPO / first).exists())


def _broken_citations(citing: Path, text: str) -> List[str]:
    """What `text`, the content of the repository file `citing`, cites that is not there."""
    where = citing.relative_to(REPO)
    broken = []
    for match in SECTION_CITATION.finditer(text):
        cited, sections = match.group(1), match.group(2).strip()
        document = _resolve(cited, citing)
        if document is None or document.suffix != ".md":
            broken.append("%s cites %s %s: no such document in the repository"
                          % (where, cited, sections))
            continue
        missing = sorted(set(SECTION_ID.findall(sections)) -
                         _sections(document.read_text(encoding="utf-8")))
        if missing:
            broken.append("%s cites %s §%s: %s has no such section"
                          % (where, cited, ", §".join(missing), document.relative_to(REPO)))
    for match in DOCUMENT_PATH.finditer(text):
        cited = match.group(1)
        if _is_repository_path(cited) and _resolve(cited, citing) is None:
            broken.append("%s names %s: no such file in the repository" % (where, cited))
    if citing.suffix == ".md":
        for match in MARKDOWN_LINK.finditer(_outside_fences(text)):
            target, _, anchor = match.group(1).partition("#")
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            document = (citing.parent / target).resolve()
            if target and (not document.exists() or REPO not in document.parents):
                broken.append("%s links to %s: no such file in the repository" % (where, target))
                continue
            linked = document.read_text(encoding="utf-8") if target else text
            if anchor and (document.suffix == ".md" or not target) and \
                    anchor not in _anchors(linked):
                broken.append("%s links to %s#%s: no such heading" % (where, target, anchor))
    return broken


def test_every_cited_document_and_section_is_in_the_repository():
    broken = [line for path in _citing_files() if path != Path(__file__).resolve()  # examples
              for line in _broken_citations(path, path.read_text(encoding="utf-8",
                                                                 errors="replace"))]
    assert not broken, "\n".join(broken)


def test_the_citation_check_reads_the_files_that_cite():
    files = {path.relative_to(REPO).as_posix() for path in _citing_files()}
    assert {"Makefile", "README.md", "pyproject.toml", "install.py", "scripts/bksdm.py",
            "docs/facts.md", "bench/gpu.py", ".ci/run"} <= files
    for package in ("bksdm_ext/model/", "bksdm_ext/webui/", "tests/", "tests/a1111/"):
        assert any(f.startswith(package) and f.endswith(".py") for f in files), package


CODE, DOC = "bksdm_ext/train/memory_plan.py", "docs/webui.md"


@pytest.mark.parametrize("citing, text, expected", [
    (CODE, "# the paper's defaults (docs/facts.md §4)", []),
    (CODE, "# calibrated to docs/facts.md §9 and §1-4, see [x](docs/facts.md) §6b", []),
    (CODE, "# see FACTS §6b", ["cites FACTS §6b: no such document"]),
    (CODE, "# see docs/facts.md §99", ["cites docs/facts.md §99: docs/facts.md has no such"]),
    (CODE, "# see docs/facts.md §4, §6c", ["cites docs/facts.md §6c: docs/facts.md has no such"]),
    (CODE, "# see facts.md §4", ["cites facts.md §4: no such document"]),
    (CODE, "# the notes are in docs/notes.md", ["names docs/notes.md: no such file"]),
    (CODE, "# see FACTS.md and bench/README.md", ["names FACTS.md: no such file"]),
    (CODE, "# captions: image.txt beside image.png, or prompts.txt", []),
    (CODE, "# the vocabulary is open_clip/bpe_simple_vocab_16e6.txt.gz", []),
    (DOC, "[facts](facts.md) §7 and [fitting](cli.md#fitting-the-gpu)", []),
    (DOC, "# Install\n[the README](../README.md#documentation), [x](#install)", []),
    (DOC, "[gone](nowhere.md)", ["links to nowhere.md: no such file"]),
    (DOC, "[a heading](cli.md#no-such-heading)", ["links to cli.md#no-such-heading: no such"]),
    (DOC, "[here](#no-such-heading)", ["links to #no-such-heading: no such heading"]),
    (DOC, "[the paper](https://arxiv.org/abs/2305.15798)", []),
    (DOC, "```\n[code](not-a-link.md)\n```", []),
])
def test_a_citation_of_a_missing_document_section_or_heading_is_found(citing, text, expected):
    found = _broken_citations(REPO / citing, text)
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found)), found


TESTS = REPO / "tests"
# The test modules about the repository as a whole, not one package: they sit at the top.
CROSS_CUTTING_TESTS = {"test_layout.py", "test_environment.py", "test_gpu_bench.py"}


def test_the_tests_mirror_the_packages():
    """A test module sits in the folder of what it tests (tests/model/ for bksdm_ext/model/,
    tests/cli/ for the command line, tests/webui/ for all that needs the A1111 stand-in), and
    each such folder is one tests/conftest.py gives its marker to; only tests of the whole
    repository sit at the top.  A new test file at the top fails here: move it."""
    from conftest import ENGINE_FOLDERS

    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    folders = {p.parent.name for p in TESTS.glob("*/test_*.py")}
    assert folders == ENGINE_FOLDERS | {"webui"}
    assert folders <= packages | {"cli"}
    misplaced = sorted({p.name for p in TESTS.glob("test_*.py")} - CROSS_CUTTING_TESTS)
    assert not misplaced, "move into the folder of what they test: %s" % ", ".join(misplaced)
