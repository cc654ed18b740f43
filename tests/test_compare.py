"""``fewshot compare`` end to end on a tiny glyph configuration, and its input errors."""

from __future__ import annotations

import csv
import json

import pytest

from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.experiments.compare import CompareConfig

TINY = "glyphs?alphabets=5&per_class=8"   # 60 base, 20 val, 20 novel classes of 8 drawings


def test_compare_end_to_end_writes_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["compare", "--data", TINY, "--epochs", "1", "--episodes", "50", "--query", "3",
               "--shot", "1,5", "--heads", "proto,nn,ls,ls-mlp", "--set", "val_episodes=20",
               "--set", "val_query=3", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    for head in ("proto", "nn", "ls", "ls-mlp"):
        assert head in printed
    assert "paired" in printed and "run folder" in printed
    for name in ("best.pt", "last.pt", "results.json", "results.md", "episodes.csv", "accuracy_vs_shot.png",
                 "compare.json", "episodes-1shot.json", "episodes-5shot.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "results.json").read_text())
    assert doc["format"] == "fewshot-eval/1"
    rows = {(r["head"], r["shot"]): r for r in doc["results"]}
    assert set(rows) == {(h, s) for h in ("proto", "nn", "ls", "ls-mlp") for s in (1, 5)}
    for r in rows.values():
        assert r["episodes"] == 50 and r["way"] == 5 and r["query"] == 3
        assert 0.2 < r["accuracy"] <= 1.0          # a trained encoder beats chance on novel glyphs
        assert 0 <= r["ci95"] < 0.2
    assert doc["paired"] and all("verdict" in p for p in doc["paired"])
    assert doc["config"]["episodes_file"]          # scored on the saved manifests
    with open(out / "episodes.csv") as fh:
        assert len(list(csv.DictReader(fh))) >= 50
    run = json.loads((out / "compare.json").read_text())
    assert run["train"]["epochs"] == 1 and run["train"]["loss"] == "circle"
    assert set(run["seconds"]) == {"data", "train", "eval", "total"}
    # nested manifests: same classes and queries at both shots
    m1 = json.loads((out / "episodes-1shot.json").read_text())["episodes"]
    m5 = json.loads((out / "episodes-5shot.json").read_text())["episodes"]
    assert [e["classes"] for e in m1] == [e["classes"] for e in m5]
    assert [e["query"] for e in m1] == [e["query"] for e in m5]


@pytest.mark.parametrize("argv, needle", [
    (["--heads", "proto,bogus"], "bogus"),
    (["--data", "nosuchkind"], "nosuchkind"),
    (["--recipe", "nosuchrecipe"], "nosuchrecipe"),
    (["--loss", "nosuchloss"], "nosuchloss"),
    (["--shot", "1,10"], "fewer than shot+query"),        # 8 drawings per class: fails before training
])
def test_compare_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    rc = main(["compare", "--data", TINY, "--out", str(tmp_path / "x"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()                  # nothing written, nothing trained


def test_compare_config_defaults_and_validation():
    cfg = CompareConfig().resolved()
    got = (cfg.data, cfg.split, cfg.novel, cfg.novel_split, cfg.recipe)
    assert got == ("glyphs", "base", "glyphs", "novel", "glyphs")
    assert cfg.heads == ("proto", "nn", "ls", "ls-mlp") and cfg.shots == (1, 5) and cfg.episodes == 2000
    assert cfg.train == {}                                  # the glyphs recipe as shipped ...
    assert CompareConfig(train={"epochs": 5}).resolved().train == {"epochs": 5}   # ... flags win
    with pytest.raises(FewShotError, match="novel classes would be the training classes"):
        CompareConfig(data="glyphs", novel_split="base").resolved()
    with pytest.raises(FewShotError):
        CompareConfig(episodes=0)
