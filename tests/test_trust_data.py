"""Trust on the input side: features are keyed on content, typed head options, model files whose
every field is checked, episodes that never repeat an image, bounded zip members."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from adapt_fixtures import make_checkpoint
from PIL import Image

from episodes import load_data
from episodes.decode import MAX_FILE_BYTES, read_zip_member
from episodes.errors import DatasetError
from episodes.protocols import EpisodeProtocol
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import evaluate
from fewshot.heads import get_head
from fewshot.options import convert, parse_spec


def _class_folder(root: Path, *, same_drawing: bool = False, classes: int = 4, per_class: int = 6) -> Path:
    """Classes of 28x28 drawings: each class a bar at its own place plus noise (class information),
    or, with ``same_drawing``, one drawing in every file under the very same names."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            img = rng.integers(0, 40, (28, 28), dtype=np.uint8)
            if same_drawing:
                img = np.full((28, 28), 128, dtype=np.uint8)
            else:
                img[:, 6 * c:6 * c + 5] = 255
            path = root / f"class{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(path)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("trust_ckpt") / "best.pt")


def _score(ckpt, root: Path, cache: Path) -> tuple[float, str]:
    data = load_data(f"folder:{root}")
    result = evaluate(ckpt, data, heads="proto", episodes=EpisodeProtocol(4, (1,), 3, 50, seed=0),
                      progress=False, cache_dir=cache)
    return float(np.mean(result.accuracy[("proto", 1)])), data.fingerprint


def _feature_files(cache: Path) -> set[str]:
    return {p.name for p in (cache / "features").glob("*.pt")}


def test_same_names_other_pixels_never_share_features(ckpt, tmp_path):
    """The issue's case: a folder whose every image is the same drawing, under the class and file
    names of a real one, must not be scored with the real folder's cached features."""
    cache = tmp_path / "cache"
    real = _class_folder(tmp_path / "a" / "set")
    fake = _class_folder(tmp_path / "b" / "set", same_drawing=True)
    acc_real, fp_real = _score(ckpt, real, cache)
    acc_fake, fp_fake = _score(ckpt, fake, cache)
    assert fp_real != fp_fake
    assert len(_feature_files(cache)) == 2           # two entries: nothing reused across the sets
    assert acc_real > 0.9 and acc_fake < 0.5          # no class information left: about chance (1/4)


def test_an_image_replaced_in_place_misses_the_feature_cache(ckpt, tmp_path):
    cache = tmp_path / "cache"
    root = _class_folder(tmp_path / "set")
    _, before = _score(ckpt, root, cache)
    first = _feature_files(cache)
    _, again = _score(ckpt, root, cache)
    assert again == before and _feature_files(cache) == first   # unchanged data: reused
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(root / "class0" / "00.png")
    _, after = _score(ckpt, root, cache)
    assert after != before and len(_feature_files(cache) - first) == 1


def test_fingerprint_covers_every_pixel():
    from episodes.imageset import ImageSet

    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    a = ImageSet(images.clone(), torch.tensor([0, 1, 1]), ["x", "y"], ["i0", "i1", "i2"])
    images[2, 0, 3, 3] = 1
    b = ImageSet(images, torch.tensor([0, 1, 1]), ["x", "y"], ["i0", "i1", "i2"])
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == ImageSet(a.images.clone(), a.labels, a.class_names, a.ids).fingerprint


# ------------------------------------------------------------- typed options
def test_head_options_are_typed():
    head = get_head("nn:k=3,weighted=false")
    assert head.k == 3 and head.weighted is False
    for text, value in [("true", True), ("1", True), ("yes", True), ("no", False), ("0", False)]:
        assert get_head(f"nn:weighted={text}").weighted is value
    assert get_head("ls:lam=0.5").lam == 0.5 and get_head("ls:lam=loo").lam == "loo"
    assert get_head("ls:grid=0.1;1;10").grid == (0.1, 1.0, 10.0)
    assert get_head("ls-mlp:gamma=none").gamma is None and get_head("ls-mlp:gamma=2").gamma == 2.0
    assert get_head("ls:dtype=float32").dtype == torch.float32
    assert get_head("ls:criterion='error'").criterion == "error"   # quoted as the old parser allowed
    assert get_head("nn", weighted="false").weighted is False       # keyword texts too


@pytest.mark.parametrize("spec,words", [
    ("nn:weighted=maybe", "true/1/yes/false/0/no"),
    ("nn:k=2.5", "an integer"),
    ("nn:k=0", "an integer >= 1"),
    ("logreg:C=0", "finite number > 0"),
    ("logreg:C=inf", "finite number > 0"),
    ("proto:scale=nan", "finite number > 0"),
    ("ls:lam=-1", "finite number > 0"),
    ("ls:grid=1;x", "number list"),
    ("ls-mlp:width=0", "an integer >= 1"),
    ("ls:dtype=int8", "float16, bfloat16, float32, float64"),
    ("nn:k", "must be key=value"),
    ("nn:k=1,k=2", "given twice"),
    ("nn:depth=3", "valid: k: int = 1, distance: str = 'euclidean', weighted: bool = True"),
])
def test_bad_head_option_is_one_line_listing_what_is_accepted(spec, words):
    with pytest.raises(FewShotError) as err:
        get_head(spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_options_parser_is_generic():
    name, raw = parse_spec("thing: a=1 , b = x ")
    assert name == "thing" and raw == {"a": "1", "b": "x"}
    assert convert("3", int | None, "x") == 3 and convert("none", int | None, "x") is None
    assert convert("2", tuple[int, ...], "x") == (2,)


# --------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model(ckpt, tmp_path_factory):
    from fewshot.adaptation.adapt import adapt

    root = _class_folder(tmp_path_factory.mktemp("trust_support"), per_class=3)
    return adapt(ckpt, root, head="ls", progress=False).save(tmp_path_factory.mktemp("m") / "model.pt"), root


def _resave(path: Path, out: Path, edit) -> Path:
    from fewshot.adaptation.classifier import payload_digest

    doc = torch.load(path, weights_only=True)
    edit(doc["payload"])
    doc["sha256"] = payload_digest(doc["payload"])
    torch.save(doc, out)
    return out


def test_model_file_never_downloads_or_reads_a_weights_file(model, tmp_path, monkeypatch):
    """A model file that says download=True and names a weights file is loaded from its own
    weights: no network (any download attempt fails this test), no other file read."""
    from fewshot.adaptation.classifier import load_classifier

    path, root = model

    def edit(p):
        kwargs = p["encoder"]["checkpoint"]["encoder"]["kwargs"]
        kwargs.update(download=True, weights=str(tmp_path / "gone.pth"))
    hostile = _resave(path, tmp_path / "hostile.pt", edit)
    import torch.hub

    def no_network(*a, **k):
        raise AssertionError("a model file made the toolkit download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    want = load_classifier(path).predict([root / "class1" / "00.png"]).labels
    assert load_classifier(hostile).predict([root / "class1" / "00.png"]).labels == want == ["class1"]


@pytest.mark.parametrize("edit,words", [
    (lambda p: p["head"].update(lam=0.0), "'head.lam': must be > 0"),
    (lambda p: p["head"].update(bias=p["head"]["bias"][:-1]), "'head.bias'"),
    (lambda p: p["head"]["weight"].fill_(float("inf")), "NaN or infinite"),
    (lambda p: p.update(base_mean=torch.zeros(3)), "'base_mean': has shape (3,)"),
    (lambda p: p["preprocess"].update(channels=2), "'preprocess.channels'"),
    (lambda p: p["preprocess"].update(std=[0.0]), "'preprocess.std': must be > 0"),
    (lambda p: p.update(transform="zca"), "'transform'"),
    (lambda p: p.update(class_names=["a"] * len(p["class_names"])), "names a class twice"),
    (lambda p: p.update(int8_calibration=torch.zeros(1, 1, 5, 5, dtype=torch.uint8)), "'int8_calibration'"),
    (lambda p: p["encoder"]["checkpoint"]["model"].popitem(), "do not fit the encoder spec"),
    (lambda p: p.update(encoder={"reference": {"path": 3}}), "'encoder.reference'"),
])
def test_model_file_fields_checked(model, tmp_path, edit, words):
    from fewshot.adaptation.classifier import load_classifier

    bad = _resave(model[0], tmp_path / "bad.pt", edit)
    with pytest.raises(FewShotError) as err:
        load_classifier(bad)
    assert words in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------- zip bound
def test_zip_member_read_is_bounded(tmp_path, monkeypatch):
    """A member that lies about its size is never inflated past the bound: the read asks for at
    most MAX_FILE_BYTES + 1 bytes, whatever the member holds."""
    import episodes.decode as decode

    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/b.png", bytes(4096))
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", 1024)
    with zipfile.ZipFile(path) as z, pytest.raises(DatasetError, match="over the 0 MiB limit"):
        read_zip_member(z, "a/b.png", f"{path}:a/b.png")
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        assert read_zip_member(z, "a/b.png", "x") == bytes(4096) and MAX_FILE_BYTES == 64 * 2**20


def test_manifest_with_repeated_image_refused(tmp_path):
    from episodes import EpisodeSpec, load_manifest, sample_episodes, save_manifest

    data = load_data(f"folder:{_class_folder(tmp_path / 'set')}")
    eps = sample_episodes(data, EpisodeSpec(2, 2, 2), 3, seed=0)
    eps.support[1, 0, 1] = eps.support[1, 0, 0]      # one support image twice in episode 1
    save_manifest(tmp_path / "m.json", eps, data)
    with pytest.raises(DatasetError, match="episode 1 uses image .* twice"):
        load_manifest(tmp_path / "m.json", data)
    assert os.path.exists(tmp_path / "m.json")
