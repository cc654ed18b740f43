"""Shared fixtures of the adaptation tests: a small real checkpoint and real Omniglot folders."""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import pytest
import torch

CLASSES = 6
SUPPORT = 5
QUERY = 3


def make_checkpoint(path: Path) -> Path:
    """A tiny Conv-4 checkpoint (28x28 grey) built with ``build_encoder`` + ``save_checkpoint`` as the
    checkpoint contract describes (seeded weights; training one with ``fewshot.training.trainer``
    costs ~30 s of the 60 s budget of these tests on the shared 2-core machine)."""
    from fewshot.models.checkpoint import save_checkpoint, state_hash
    from fewshot.models.encoders import build_encoder
    from fewshot.models.preprocess import Preprocess

    torch.manual_seed(0)
    enc = build_encoder("conv4", in_channels=1, num_classes=10, image_size=28, width=32)
    state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    digest = state_hash(state)
    save_checkpoint(path, {"model": state, "encoder": enc.spec,
                           "preprocess": Preprocess(28, 1, 0.9, 0.3).to_dict(), "distance": "euclidean",
                           "hash": digest, "base_classes": [f"c{i}" for i in range(10)],
                           "base_mean": torch.zeros(enc.embedding_dim)})
    return path


def extract_omniglot(zip_path: Path, out: Path, alphabet: str, classes: int, support: int, query: int
                     ) -> tuple[Path, Path]:
    """``out/support/<char>/*.png`` and ``out/query/<char>/*.png`` from real Omniglot drawings."""
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if f"/{alphabet}/" in n and n.endswith(".png"))
        chars = sorted({n.split("/")[-2] for n in names})[:classes]
        for c in chars:
            files = [n for n in names if n.split("/")[-2] == c]
            for i, n in enumerate(files[:support + query]):
                part = "support" if i < support else "query"
                dest = out / part / c / Path(n).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(n))
    return out / "support", out / "query"


@functools.cache
def _checkpoint(base: Path) -> Path:
    return make_checkpoint(base / "adapt_ckpt" / "best.pt")


@functools.cache
def _folders(zip_path: Path, base: Path) -> tuple[Path, Path]:
    return extract_omniglot(zip_path, base / "adapt_tagalog", "Tagalog", CLASSES, SUPPORT, QUERY)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """Built once per session even though two test modules import this fixture."""
    return _checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def folders(omniglot_dir, tmp_path_factory) -> tuple[Path, Path]:
    return _folders(omniglot_dir / "images_background_small2.zip", tmp_path_factory.getbasetemp())
