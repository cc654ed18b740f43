"""The bad-input table: every hostile file, option and output path, through the real CLI.

Each row runs ``fewshot.cli.main`` in-process and asserts the promise of the README: exactly one
line on stderr, exit status 2, no traceback, and nothing written where the output would go. The
fixtures are built here: real PNGs in class folders, a real zip damaged byte by byte, a tiny
real checkpoint and a classifier file adapted from it, then edited and re-hashed as an attacker
would.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from adapt_fixtures import make_checkpoint
from PIL import Image

from fewshot.cli import main

WAY = ["--way", "2", "--shot", "1", "--query", "1", "--episodes", "2"]


# ----------------------------------------------------------------- fixtures
def _png(path: Path, seed: int, size: int = 28) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(path)


def _folder(root: Path, classes: int = 3, per_class: int = 3, seed: int = 0) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"class{c}" / f"{i}.png", seed * 1000 + c * 10 + i)
    return root


def _omniglot_zip(path: Path) -> Path:
    """An Omniglot-layout zip (``set/Alphabet/characterNN/*.png``), deflated like the official ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for c in range(3):
            for i in range(3):
                rng = np.random.default_rng(c * 10 + i)
                img = Image.fromarray(rng.integers(0, 2, (28, 28), dtype=np.uint8) * 255, "L")
                from io import BytesIO
                buf = BytesIO()
                img.save(buf, format="PNG")
                z.writestr(f"{path.stem}/Alpha/character{c + 1:02d}/{c}_{i}.png", buf.getvalue())
    return path


def _member_data_offset(path: Path, index: int = 0) -> int:
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[index]
    raw = path.read_bytes()
    name_len, extra_len = np.frombuffer(raw[info.header_offset + 26:info.header_offset + 30], "<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Shared real inputs: a class-folder set, a checkpoint, a classifier file, an Omniglot zip."""
    base = tmp_path_factory.mktemp("bad_input")
    data = _folder(base / "data")
    ckpt = make_checkpoint(base / "ckpt" / "best.pt")
    from fewshot.adaptation.adapt import adapt

    model = adapt(ckpt, data, head="proto", progress=False).save(base / "model.pt")
    return {"base": base, "data": data, "ckpt": ckpt, "model": model,
            "zip": _omniglot_zip(base / "zips" / "images_background_small9.zip")}


def _edited_model(fx, tmp: Path, edit) -> Path:
    """The classifier file with ``edit(payload)`` applied and its hash recomputed (so only the
    field checks, not the integrity check, can catch it)."""
    from fewshot.adaptation.classifier import payload_digest

    doc = torch.load(fx["model"], weights_only=True)
    edit(doc["payload"])
    doc["sha256"] = payload_digest(doc["payload"])
    path = tmp / "edited.pt"
    torch.save(doc, path)
    return path


# ---------------------------------------------------------------- the table
def _eval(fx, out, *extra):
    return ["eval", "--checkpoint", str(fx["ckpt"]), "--data", f"folder:{fx['data']}", *WAY, "--quiet",
            "--heads", "proto", "--out", str(out), *extra]


def _episodes(fx, out, data=None):
    return ["episodes", "--data", data or f"folder:{fx['data']}", *WAY, "--out", str(out)]


def _adapt(fx, out):
    return ["adapt", "--checkpoint", str(fx["ckpt"]), "--support", str(fx["data"]), "--head", "proto",
            "--out", str(out)]


def _predict(fx, out, model=None):
    return ["predict", "--model", str(model or fx["model"]), str(fx["data"] / "class0" / "0.png"),
            "--out", str(out)]


def _train(fx, out):
    return ["train", "--data", f"folder:{fx['data']}", "--epochs", "1", "--quiet", "--out", str(out)]


COMMANDS = {"eval": (_eval, "dir"), "episodes": (_episodes, "file"), "adapt": (_adapt, "file"),
            "predict": (_predict, "file"), "train": (_train, "dir")}


def _output_cases():
    """Every command x (output is an existing file where a folder goes / a folder where a file
    goes, output under a regular file, full disk)."""
    cases = []
    for name, (build, kind) in COMMANDS.items():
        def wrong_kind(fx, tmp, build=build, kind=kind):
            out = tmp / "taken"
            if kind == "dir":
                out.write_text("a file, not a folder")
            else:
                out.mkdir()
            return build(fx, out), out

        def under_file(fx, tmp, build=build):
            (tmp / "plain").write_text("x")
            out = tmp / "plain" / "sub" / "out"
            return build(fx, out), out

        def full_disk(fx, tmp, build=build):
            out = tmp / "out"
            return build(fx, out), out

        cases += [pytest.param(wrong_kind, None, id=f"{name}-out-wrong-kind"),
                  pytest.param(under_file, None, id=f"{name}-out-under-a-file"),
                  pytest.param(full_disk, "enospc", id=f"{name}-out-full-disk")]
    return cases


def _damaged_member(fx, tmp):
    path = tmp / "images_background_small9.zip"
    raw = bytearray(fx["zip"].read_bytes())
    at = _member_data_offset(fx["zip"])
    raw[at:at + 8] = b"\xff" * 8  # a deflate block of the reserved type 3: zlib.error
    path.write_bytes(bytes(raw))
    return _episodes(fx, tmp / "m.json", f"omniglot:{path}"), tmp / "m.json"


def _damaged_directory(fx, tmp):
    path = tmp / "images_background_small9.zip"
    raw = fx["zip"].read_bytes()
    at = raw.index(b"PK\x01\x02")
    path.write_bytes(raw[:at] + b"XXXX" + raw[at + 4:])  # BadZipFile: bad central directory magic
    return _episodes(fx, tmp / "m.json", f"omniglot:{path}"), tmp / "m.json"


def _huge_member(fx, tmp):
    path = tmp / "images_background_small9.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images_background_small9/Alpha/character01/big.png", bytes(65 * 2**20))
    return _episodes(fx, tmp / "m.json", f"omniglot:{path}"), tmp / "m.json"


def _lying_member(fx, tmp):
    """A member whose headers declare 100 bytes but whose data inflates to 1 MiB."""
    path = tmp / "images_background_small9.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images_background_small9/Alpha/character01/big.png", bytes(2**20))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    raw[info.header_offset + 22:info.header_offset + 26] = (100).to_bytes(4, "little")
    cd = raw.index(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return _episodes(fx, tmp / "m.json", f"omniglot:{path}"), tmp / "m.json"


def _self_symlink(fx, tmp):
    data = _folder(tmp / "data")
    os.symlink("loop.png", data / "class0" / "loop.png")
    return _episodes(fx, tmp / "m.json", f"folder:{data}"), tmp / "m.json"


def _huge_image(fx, tmp):
    data = _folder(tmp / "data")
    Image.new("L", (9500, 9500)).save(data / "class0" / "huge.png")  # 90 MP in 90 KB
    return _episodes(fx, tmp / "m.json", f"folder:{data}?strict=1"), tmp / "m.json"


def _mini_l2l(rows):
    def case(fx, tmp):
        images = np.zeros((4, 84, 84, 3), dtype=np.uint8)
        (tmp / "mini").mkdir()
        doc = {"image_data": images, "class_dict": {"n01": rows, "n02": [2, 3]}}
        (tmp / "mini" / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps(doc))
        return _episodes(fx, tmp / "m.json", f"miniimagenet:{tmp / 'mini'}") + ["--split", "base"], \
            tmp / "m.json"
    return case


def _mini_metaoptnet(labels, catname2label=None):
    def case(fx, tmp):
        (tmp / "mini").mkdir()
        doc = {"data": np.zeros((4, 84, 84, 3), dtype=np.uint8), "labels": labels,
               "catname2label": catname2label or {"n01": 0, "n02": 1}}
        (tmp / "mini" / "miniImageNet_category_split_train_phase_train.pickle").write_bytes(pickle.dumps(doc))
        return _episodes(fx, tmp / "m.json", f"miniimagenet:{tmp / 'mini'}") + ["--split", "base"], \
            tmp / "m.json"
    return case


def _head(spec):
    def case(fx, tmp):
        return _eval(fx, tmp / "out", "--heads", spec), tmp / "out"
    return case


def _manifest(make):
    def case(fx, tmp):
        path = tmp / "episodes.json"
        path.write_text(make(fx, tmp))
        return _eval(fx, tmp / "out", "--episodes-file", str(path)), tmp / "out"
    return case


def _deep(fx, tmp):
    return "[" * 100_000 + "]" * 100_000


def _overlap(fx, tmp):
    """A real manifest of the data whose every query is its episode's support image."""
    good = tmp / "good.json"
    assert main(_episodes(fx, good)) == 0
    doc = json.loads(good.read_text())
    for ep in doc["episodes"]:
        ep["query"] = [list(row) for row in ep["support"]]
    return json.dumps(doc)


def _model(edit):
    def case(fx, tmp):
        return _predict(fx, tmp / "pred.csv", _edited_model(fx, tmp, edit)), tmp / "pred.csv"
    return case


def _set_pre(key, value):
    def edit(p):
        p["preprocess"][key] = value
    return edit


def _tiny_images(fx, tmp):
    """8x8 digits through Conv-4's four max-pools: refused before the first step."""
    recipe = tmp / "novalidation.toml"
    recipe.write_text("val_fraction = 0.0\nbatch_size = 32\nepochs = 1\n")
    argv = ["train", "--data", "digits", "--recipe", str(recipe), "--out", str(tmp / "run"), "--quiet"]
    return argv, tmp / "run"


def _glyph_split(fx, tmp):
    """Three generated alphabets leave the val split empty."""
    return ["episodes", "--data", "glyphs?alphabets=3", "--split", "val", "--out", str(tmp / "e.json")], \
        tmp / "e.json"


def _grid(fx, tmp):
    grid = tmp / "grid.toml"
    grid.write_text(f'name = "bad"\ndata = "folder:{fx["data"]}"\nsplit = ""\nseeds = [0]\n'
                    '[train]\nepochs = 1\n[grid]\nhead = ["proto", "nn:kk=3"]\n'
                    f'[[eval.sets]]\nname = "novel"\ndata = "folder:{fx["data"]}"\n')
    return ["ablate", "--grid", str(grid), "--out", str(tmp / "abl"), "--quiet"], tmp / "abl"


CASES = _output_cases() + [
    pytest.param(_damaged_member, None, id="zip-member-damaged-data"),
    pytest.param(_damaged_directory, None, id="zip-central-directory-damaged"),
    pytest.param(_huge_member, None, id="zip-member-over-size-limit"),
    pytest.param(_lying_member, None, id="zip-member-inflates-past-declared-size"),
    pytest.param(_self_symlink, None, id="folder-symlink-to-itself"),
    pytest.param(_huge_image, None, id="image-over-pixel-limit"),
    pytest.param(_mini_l2l([0.5, 1.5]), None, id="miniimagenet-l2l-float-rows"),
    pytest.param(_mini_l2l(["a", "b"]), None, id="miniimagenet-l2l-text-rows"),
    pytest.param(_mini_metaoptnet([0.0, 0.5, 1.0, 1.0]), None, id="miniimagenet-metaoptnet-float-labels"),
    pytest.param(_mini_metaoptnet([0, 0, 1, 1], {"n01": "zero", "n02": 1}), None,
                 id="miniimagenet-metaoptnet-text-catname2label"),
    pytest.param(_head("logreg:C=0"), None, id="head-logreg-C-0"),
    pytest.param(_head("proto:scale=nan"), None, id="head-proto-scale-nan"),
    pytest.param(_head("nn:weighted=maybe"), None, id="head-nn-weighted-maybe"),
    pytest.param(_head("nn:k=2.5"), None, id="head-nn-k-fraction"),
    pytest.param(_manifest(_deep), None, id="manifest-nested-100000-deep"),
    pytest.param(_manifest(_overlap), None, id="manifest-query-repeats-support"),
    pytest.param(_model(_set_pre("image_size", [100_000, 100_000])), None, id="model-image-size-100000"),
    pytest.param(_model(_set_pre("frame", 1.5)), None, id="model-frame-1.5"),
    pytest.param(_model(_set_pre("frame", "ink")), None, id="model-frame-text"),
    pytest.param(_model(lambda p: p.update(temperature=0.0)), None, id="model-temperature-0"),
    pytest.param(_model(lambda p: p.update(temperature=float("nan"))), None, id="model-temperature-nan"),
    pytest.param(_model(lambda p: p.update(class_names=p["class_names"][:-1])), None,
                 id="model-class-list-short"),
    pytest.param(_model(lambda p: p["head"].update(sums=p["head"]["sums"].float()[:, :3])), None,
                 id="model-head-feature-size"),
    pytest.param(_model(lambda p: p["head"].update(counts=p["head"]["counts"].double())), None,
                 id="model-head-counts-dtype"),
    pytest.param(_model(lambda p: p["encoder"]["checkpoint"]["encoder"]["kwargs"].update(width=100_000)),
                 None, id="model-encoder-width-100000"),
    pytest.param(_model(lambda p: p.update(extra="?")), None, id="model-unknown-field"),
    pytest.param(_model(lambda p: p.update(tta={"views": 10**9, "augment": {"mode": "crop"}})), None,
                 id="model-tta-views-1e9"),
    pytest.param(_model(lambda p: p.update(tta={"views": 4, "augment": {"mode": "warp"}})), None,
                 id="model-tta-unknown-mode"),
    pytest.param(_grid, None, id="ablation-grid-bad-head-option"),
    pytest.param(_tiny_images, None, id="train-images-too-small-for-the-encoder"),
    pytest.param(_glyph_split, None, id="glyphs-split-without-alphabets"),
]


def _snapshot(path: Path):
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.mark.parametrize("case,fault", CASES)
def test_refused_in_one_line(case, fault, fx, tmp_path, capsys, monkeypatch):
    argv, out = case(fx, tmp_path)
    before = _snapshot(out)
    capsys.readouterr()
    if fault == "enospc":
        import episodes.atomic

        def full(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(episodes.atomic.os, "write", full)
    rc = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"fewshot {argv[0]}: error: "), err
    assert _snapshot(out) == before, f"{out} changed on refusal"


# ------------------------------------------------------- warn and go on
def test_unwritable_cache_warns_and_goes_on(fx, tmp_path, capsys, monkeypatch):
    """A cache folder that cannot be written (here: under a regular file, since tests run as root
    and chmod does not stop root) costs the cache, not the run: one-line warnings, exit 0."""
    (tmp_path / "plain").write_text("x")
    monkeypatch.setenv("FEWSHOT_CACHE_DIR", str(tmp_path / "plain" / "cache"))
    rc = main(_eval(fx, tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert [w for w in warnings if w.startswith("fewshot eval: warning: ") and "cannot write the" in w] \
        == warnings and len(warnings) == 2, err  # the image cache and the feature cache, one line each
    assert any("feature cache" in line for line in warnings) and "Traceback" not in err
    assert (tmp_path / "out" / "results.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into 0o500 folders; covered by the "
                    "under-a-file rows")
def test_read_only_folder_refused(fx, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(_episodes(fx, ro / "m.json")) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not (ro / "m.json").exists()
    finally:
        ro.chmod(0o700)


def test_warnings_are_one_line(fx, tmp_path, capsys):
    """A skipped unreadable image warns in one clean line (no Python source line under it)."""
    data = _folder(tmp_path / "data")
    (data / "class0" / "broken.png").write_bytes(b"not a png")
    rc = main(_episodes(fx, tmp_path / "m.json", f"folder:{data}"))
    err = capsys.readouterr().err
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fewshot episodes: warning: skipped"), err
    assert "broken.png" in lines[0] and "warnings.warn" not in err


def test_disk_full_during_the_final_write_is_one_line(fx, tmp_path, capsys, monkeypatch):
    """The probe passed, then the disk filled: the failing write is one line, exit 2, and leaves
    no partial or temporary file behind."""
    import episodes.atomic

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))
    monkeypatch.setattr(episodes.atomic.os, "replace", full)
    rc = main(_eval(fx, tmp_path / "out"))
    monkeypatch.undo()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fewshot eval: error: ")]
    others = [line for line in err.splitlines() if line not in errors]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert all(line.startswith("fewshot eval: warning: ") and "cannot write the" in line for line in others)
    assert "results.json: No space left on device" in errors[0]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
