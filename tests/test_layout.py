"""The package layout shows the architecture: one folder per concern, imports only downward.

Each rule here is what a package's ``__init__`` docstring promises; a new import that
breaks one fails this test instead of quietly tangling the layers.  `scores` (PSNR, SSIM,
CLIP score) sits between `model` and the two packages that both score images, `train`
(evaluation during distillation) and `measure` (the Compare tab, `bksdm eval`), which may
not import each other.  `measure` may import `jobs`: an evaluation run as a background job
writes the runner's event file.
"""
import ast
from pathlib import Path
from typing import Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bksdm_ext"
TOP_LEVEL = {"__init__", "__main__", "cli", "demo", "errors",
             "ldm_unet"}  # ldm_unet: the yaml target students on disk name, re-exported
MAY_IMPORT = {  # subpackage -> the bksdm_ext parts it may import (__init__: __version__)
    "model": {"__init__", "errors"},
    "jobs": {"__init__", "errors"},
    "scores": {"__init__", "errors", "model"},
    "train": {"__init__", "errors", "model", "jobs", "scores"},
    "measure": {"__init__", "errors", "model", "jobs", "scores"},
}


def _imported_parts(path: Path) -> Set[str]:
    """The top-level bksdm_ext parts (errors, model, ...) a module imports, plus 'modules'
    when it imports A1111."""
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
                elif first == "modules":
                    parts.add("modules")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                first, *rest = alias.name.split(".")
                if first == "bksdm_ext" and rest:
                    parts.add(rest[0])
                elif first == "modules":
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


def test_only_the_webui_package_imports_a1111():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "webui" not in path.relative_to(PACKAGE).parts:
            assert "modules" not in _imported_parts(path), path
