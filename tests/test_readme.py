"""The README's Python blocks run as written, top to bottom, from the repository's root."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    """The code of every ```python fenced block, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks, "the README has a Python quick start"
    # a copy of the clone's layout: relative paths in the README (runs/..., ../shared/...) resolve the same
    work = tmp_path / "clone"
    work.mkdir()
    if (ROOT.parent / "shared").exists():
        os.symlink(ROOT.parent / "shared", tmp_path / "shared")
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:  # one namespace: later blocks may use what earlier ones defined
        exec(compile(code, "README.md", "exec"), namespace)
    shutil.rmtree(work, ignore_errors=True)
