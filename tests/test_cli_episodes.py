"""``fewshot episodes`` in-process: manifests written, errors as one line and exit code 2."""

from __future__ import annotations

import json

from episodes.manifest import load_manifest
from episodes.specs import load_data
from fewshot.cli import main


def test_writes_a_manifest(tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(["episodes", "--data", "glyphs?alphabets=5", "--split", "novel", "--way", "5", "--shot", "1",
               "--query", "15", "--episodes", "50", "--seed", "3", "--within-group", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.count("\n") == 1
    assert "wrote 50 episodes (5-way 1-shot 15-query, seed 3, within-group)" in captured.out
    doc = json.loads(out.read_text())
    assert doc["seed"] == 3 and len(doc["episodes"]) == 50 and doc["within_group"]
    data = load_data("glyphs?alphabets=5", "novel")
    eps = load_manifest(out, data)
    assert eps.classes.shape == (50, 5)
    assert doc["dataset"]["name"] == "glyphs?alphabets=5 (split novel)"


def test_drop_small_and_errors(omniglot_dir, tmp_path, capsys):
    small2 = omniglot_dir / "images_background_small2.zip"
    out = tmp_path / "t.json"
    rc = main(["episodes", "--data", f"omniglot:{small2}?groups=Tagalog", "--way", "20", "--within-group",
               "--image-size", "28", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("fewshot episodes: error: ")
    assert str(small2) in err and "Tagalog, has 17" in err and not out.exists()

    for argv, needle in [
        (["--data", f"folder:{tmp_path}/absent"], f"{tmp_path}/absent: no such folder"),
        (["--data", "mnist"], "unknown data kind 'mnist'"),
        (["--data", "digits", "--split", "base"], "digits has no split 'base'"),
        (["--data", "glyphs?per_class=3", "--split", "val", "--shot", "1", "--query", "5"],
         "have fewer than shot+query=6 images"),
        (["--data", "digits", "--episodes", "0"], "--episodes must be positive"),
    ]:
        rc = main(["episodes", *argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and needle in err, err
    rc = main(["episodes", "--data", "glyphs?per_class=3&alphabets=5", "--split", "val", "--query", "5",
               "--drop-small", "--out", str(out)])
    assert rc == 2 and "need 5 classes" in capsys.readouterr().err  # every class dropped: still one line
