"""miniImageNet on real photos: the shared copy (64 base classes x 600, 16 val classes x 100).

The CPU recipe trains one short epoch on a few images per class and is evaluated; the shared copy
has no test split, and asking for it is a one-line error naming the missing folder. Bad photos in
a class-folder root (grey, CMYK, truncated) keep the reader's promises.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from episodes.errors import DatasetError
from episodes.specs import load_data
from fewshot.cli import main
from fewshot.models.checkpoint import load_checkpoint
from fewshot.training.config import TrainConfig

MINI = SHARED_DATA / "miniimagenet"


@pytest.fixture(scope="module")
def mini_root():
    if not (MINI / "train").is_dir():
        pytest.skip(f"the shared miniImageNet copy is not at {MINI}")
    return MINI


def test_novel_split_of_the_shared_copy_is_a_one_line_error(mini_root, tmp_path, capsys):
    out = tmp_path / "eps.json"
    rc = main(["episodes", "--data", f"miniimagenet:{mini_root}", "--split", "novel", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "test" in err[0] and "missing the novel split" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_conv4_recipe_trains_one_short_epoch_and_evaluates(mini_root, tmp_path, capsys):
    run = tmp_path / "run"
    val = f"miniimagenet:{mini_root}?split=val&max_per_class=20"
    rc = main(["train", "--data", f"miniimagenet:{mini_root}?max_per_class=4",
               "--recipe", "miniimagenet-conv4", "--epochs", "1", "--val", val, "--val-episodes", "20",
               "--out", str(run), "--quiet", "--threads", "2"])
    assert rc == 0, capsys.readouterr().err
    ckpt = load_checkpoint(run / "best.pt")
    assert len(ckpt["base_classes"]) == 64  # a root's base split only: never its val classes
    assert json.loads((run / "config.json").read_text())["split"] == "base"
    assert ckpt["encoder"]["name"] == "conv4" and ckpt["encoder"]["kwargs"]["width"] == [32, 64, 128, 256]
    # trained at the recipe's 56x56; the eval below reads the 84x84 photos, resized by the checkpoint
    assert ckpt["preprocess"]["image_size"] == [56, 56] and ckpt["preprocess"]["channels"] == 3
    assert ckpt["config"]["precision"] == "fast"  # bf16 where the CPU runs it natively, else fp32
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0.0 <= rows[0]["val_5w1s"] <= 1.0 and np.isfinite(rows[0]["loss"])

    out = tmp_path / "eval"
    rc = main(["eval", "--checkpoint", str(run / "best.pt"), "--data", val, "--way", "5", "--shot", "1,5",
               "--episodes", "30", "--heads", "proto,ls,proto-dc", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    assert {r["head"] for r in doc["results"]} == {"proto", "ls", "proto-dc"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in doc["results"])
    # proto-dc calibrates toward the 64 base-class means the run recorded (56x56 training photos)
    assert ckpt["base_class_means"]["l2"].shape == (64, 2304)


def test_recipe_encoder_options_follow_their_encoder():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own = TrainConfig.resolve("miniimagenet")
        other = TrainConfig.resolve("miniimagenet", encoder="conv4")
    assert own.encoder == "resnet12" and own.encoder_args == {"drop_rate": 0.1}
    assert other.encoder == "conv4" and other.encoder_args == {}
    notes = [str(w.message) for w in caught]
    assert len(notes) == 1 and "drop_rate=0.1 are for resnet12" in notes[0]
    # options given on the command line are the user's own: they are kept
    mine = TrainConfig.resolve("miniimagenet", encoder="conv4", encoder_args={"width": 32})
    assert mine.encoder_args == {"width": 32}


def test_resnet_recipe_with_conv4_runs(mini_root, tmp_path, capsys):
    val = f"miniimagenet:{mini_root}?split=val&max_per_class=20"
    rc = main(["train", "--data", f"miniimagenet:{mini_root}?max_per_class=4", "--recipe", "miniimagenet",
               "--encoder", "conv4", "--epochs", "1", "--val", val,
               "--val-episodes", "10", "--out", str(tmp_path / "run"), "--quiet", "--threads", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err


# ------------------------------------------------------------ bad photos
def _folder_root(tmp_path, per_class: int = 4):
    rng = np.random.default_rng(0)
    root = tmp_path / "mini"
    for split, wnids in {"train": ["n01", "n02"], "val": ["n03", "n04"]}.items():
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(
                    root / split / w / f"{w}{i:08d}.jpg", quality=90)
    return root


def test_grey_and_cmyk_jpegs_become_rgb(tmp_path):
    root = _folder_root(tmp_path)
    grey = root / "train" / "n01" / "n0100000001.jpg"
    Image.open(grey).convert("L").save(grey)
    cmyk = root / "train" / "n02" / "n0200000002.jpg"
    Image.open(cmyk).convert("CMYK").save(cmyk)
    assert Image.open(cmyk).mode == "CMYK"
    data = load_data(f"miniimagenet:{root}", "base")
    assert tuple(data.images.shape) == (8, 3, 84, 84)
    g = data.images[data.ids.index("train/n01/n0100000001.jpg")]
    assert (g[0] == g[1]).all() and (g[1] == g[2]).all()  # grey stays grey, as RGB


def test_truncated_jpeg_names_the_file(tmp_path):
    root = _folder_root(tmp_path)
    bad = root / "train" / "n02" / "n0200000003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DatasetError, match="n0200000003.jpg") as exc:
        load_data(f"miniimagenet:{root}", "base")
    assert "\n" not in str(exc.value)


def test_class_smaller_than_shot_plus_query_is_named(tmp_path, capsys):
    root = _folder_root(tmp_path)
    for f in sorted((root / "val" / "n04").iterdir())[1:]:
        f.unlink()
    rc = main(["episodes", "--data", f"miniimagenet:{root}", "--split", "val", "--way", "2", "--shot", "1",
               "--query", "2", "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert rc == 2 and len(errors) == 1 and "n04" in errors[0] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "e.json").exists()


def test_validation_classes_inside_training_are_refused(tmp_path):
    from _train_data import digits_set

    from fewshot.errors import FewShotError
    from fewshot.training.trainer import train

    data = digits_set()
    cfg = TrainConfig(epochs=1, batch_size=16, m=4, val_way=3, val_shots=[1], val_episodes=5, device="cpu")
    with pytest.raises(FewShotError, match="overlap the training classes"):
        train(cfg, data, data.select_classes(data.class_names[:4]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
