"""rayzor installs one top-level name, and no name a current Python's stdlib takes."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import distribution

# Top-level names of Python 3.14's stdlib that a tool of this field could pick (PEP 784 added `compression`),
# joined with the running Python's own list, so the check means the same on 3.11-3.13.
STDLIB_3_14 = frozenset({"compression", "annotationlib", "concurrent", "string", "types", "tomllib"})


def _top_level_names() -> set[str]:
    """Top-level names the installed distribution declares, and those an editable install maps."""
    dist = distribution("rayzor")
    names = set((dist.read_text("top_level.txt") or "").split())
    for f in dist.files or ():
        if f.name.startswith("__editable___") and f.name.endswith("_finder.py"):
            mapping = next(line for line in f.read_text().splitlines() if line.startswith("MAPPING"))
            names.update(key.split(".")[0] for key in re.findall(r"'([\w.]+)':", mapping))
    return names


def test_one_top_level_name():
    assert _top_level_names() == {"rayzor"}


def test_no_top_level_name_is_a_stdlib_module():
    stdlib = set(sys.stdlib_module_names) | STDLIB_3_14
    assert "compression" in stdlib  # the collision the namespace exists to avoid
    assert not _top_level_names() & stdlib


def test_bare_package_names_are_not_importable_from_an_install(tmp_path):
    """Outside the repository, only ``rayzor.*`` imports: the old bare names are gone."""
    code = (
        "import importlib.util, sys; import rayzor.compression, rayzor.search, rayzor.spaces, rayzor.cluster; "
        "print([n for n in ('spaces', 'search', 'cluster') if importlib.util.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
