"""Shared fixtures: the real Omniglot minimal sets beside the project, small seeded data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEWSHOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
OMNIGLOT = SHARED_DATA / "omniglot"


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """``../shared/data/omniglot`` (the two official minimal background zips)."""
    if not (OMNIGLOT / "images_background_small1.zip").exists():
        pytest.skip(f"Omniglot minimal sets not found under {OMNIGLOT}")
    return OMNIGLOT


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its caches under a temporary folder, never the user's cache."""
    monkeypatch.setenv("FEWSHOT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
