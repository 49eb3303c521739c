"""The engine stays free of the search stack: importing it loads neither Optuna nor Ray."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_neither_optuna_nor_ray():
    code = (
        "import sys, rayzor.compression, rayzor.compression.students; "
        "print(sorted(m for m in ('optuna', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
