"""``fewshot ablate``: grid expansion, resume after a kill, atomic results, summary, bad input."""

from __future__ import annotations

import json

import pytest

import fewshot.experiments.ablate as ablate
from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.experiments.ablate import run_ablation
from fewshot.experiments.grid import Grid, grid_from_dict, load_grid
from fewshot.experiments.summary import summarize

TINY = "glyphs?alphabets=5&per_class=8"

TINY_GRID = f"""
name = "tiny"
data = "{TINY}"
recipe = "glyphs"
seeds = [0]

[train]            # metric cells: one short epoch
epochs = 1
val_episodes = 10
val_query = 3

[episodic]         # episodic cells: a few ProtoNet steps
epochs = 1
steps_per_epoch = 4
episodes_per_step = 2
way = 5
shot = 1
query = 3
val_fraction = 0.0

[grid]
mode = ["metric", "episodic"]
head = ["proto", "nn"]
shot = [1, 2]

[eval]
episodes = 20
query = 4
"""


def test_grid_expansion_collapses_factors_that_do_not_apply():
    grid = grid_from_dict({"grid": {"mode": ["metric", "episodic"], "loss": ["circle", "triplet"],
                                    "miner": ["multisimilarity", "none"], "episodic_head": ["proto", "ls"],
                                    "head": ["proto", "ls"], "shot": [1, 5], "transform": ["none", "l2"]},
                           "seeds": 3})
    cells = grid.cells()
    metric = [c for c in cells if c.factors["mode"] == "metric"]
    episodic = [c for c in cells if c.factors["mode"] == "episodic"]
    assert len(metric) == 4 and len(episodic) == 2          # loss x miner; episodic_head
    assert all("loss" not in c.factors for c in episodic)
    assert all("episodic_head" not in c.factors for c in metric)
    assert len({c.id for c in cells}) == 6
    assert len(grid.eval_points()) == 8 and grid.seeds == [0, 1, 2]
    assert [s.name for s in grid.eval_sets] == ["novel"]
    # the id depends on everything the training depends on
    other = grid_from_dict({"grid": {"mode": ["metric"], "loss": ["circle"], "miner": ["multisimilarity"]},
                            "train": {"epochs": 2}})
    assert other.cells()[0].id not in {c.id for c in cells}
    w = grid_from_dict({"grid": {"weights": [[1, 0], [0.1, 1.0], [0, 1]]}})
    assert w.factors["weights"] == [[1.0, 0.0], [0.1, 1.0], [0.0, 1.0]]


@pytest.mark.parametrize("doc, needle", [
    ({"grid": {"los": ["circle"]}}, "unknown factor 'los'"),
    ({"grid": {"shot": [0]}}, "positive integers"),
    ({"grid": {"weights": [[0, 0]]}}, "w_metric"),
    ({"grid": {"mode": ["bogus"]}}, "training mode"),
    ({"grid": {"transform": ["zca"]}}, "transform"),
    ({"eval": {"episodes": 0}}, "episodes"),
    ({"eval": {"bogus": 1}}, "unknown [eval] keys"),
    ({"seedz": 3}, "unknown grid keys"),
])
def test_bad_grid_is_refused(doc, needle):
    with pytest.raises(FewShotError) as info:
        grid_from_dict(doc)
    assert needle in str(info.value)


def _count_training(monkeypatch) -> list:
    calls = []
    real = ablate.train_cell

    def counting(grid, cell, seed, *args, **kw):
        calls.append((cell.id, seed))
        return real(grid, cell, seed, *args, **kw)

    monkeypatch.setattr(ablate, "train_cell", counting)
    return calls


def test_resume_after_interruption_never_recomputes_a_finished_cell(tmp_path, monkeypatch):
    path = tmp_path / "grid.toml"
    path.write_text(TINY_GRID)
    grid = load_grid(path)
    out = tmp_path / "abl"
    calls = _count_training(monkeypatch)

    class Killed(Exception):
        pass

    def kill_after_first(cell, seed, records):
        raise Killed

    with pytest.raises(Killed):
        run_ablation(grid, out, progress=False, on_cell_done=kill_after_first)
    assert len(calls) == 1
    doc = json.loads((out / "results.json").read_text())       # whole, valid, one finished cell
    assert list(doc["runs"]) == [f"{calls[0][0]}/seed0"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert sorted(p.name for p in (out / "episodes").iterdir()) == ["novel-1shot.json", "novel-2shot.json"]

    result = run_ablation(grid, out, progress=False)
    assert len(calls) == 2 and calls[1] != calls[0]             # only the missing cell was trained
    assert (result.trained, result.skipped) == (1, 1)
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["runs"]) == 2
    for run in doc["runs"].values():
        assert len(run["records"]) == 4                         # 2 heads x 2 shots on one set
        for rec in run["records"]:
            assert len(rec["correct"]) == 20 and rec["queries"] == 5 * 4
            assert 0.2 < rec["accuracy"] <= 1.0

    # a third run trains nothing and reproduces the same summary
    again = run_ablation(grid, out, progress=False)
    assert len(calls) == 2 and again.trained == 0
    assert json.dumps(again.summary["rows"]) == json.dumps(result.summary["rows"])   # NaN-safe

    # summary: one row per cell x head x shot; mode compared pairwise; files written
    rows = result.summary["rows"]
    assert len(rows) == 8
    modes = [c for c in result.summary["comparisons"] if c["factor"] == "mode"]
    assert len(modes) == 4 and all(c["verdict"] for c in modes)
    assert all(c["context"].keys() == {"head", "shot"} for c in modes)
    text = (out / "summary.md").read_text()
    assert "Paired comparisons" in text and "| novel | metric | proto | 1 |" in text
    for png in ("accuracy_vs_shot.png", "factor_mode.png", "factor_head.png"):
        assert (out / "plots" / png).stat().st_size > 1000

    # the CLI rebuilds the summary from the results alone
    assert main(["ablate", "--grid", str(path), "--out", str(out), "--summary-only"]) == 0


def test_results_of_other_episodes_are_not_mixed(tmp_path):
    out = tmp_path / "abl"
    out.mkdir()
    grid = Grid(name="x", episodes=10)
    (out / "results.json").write_text(json.dumps({"format": ablate.FORMAT, "runs": {},
                                                  "eval": {"episodes": 99}}))
    with pytest.raises(FewShotError, match="other episodes"):
        run_ablation(grid, out, progress=False)


@pytest.mark.parametrize("content, needle", [
    ("[grid\nloss = [", "not valid TOML"),
    ('[grid]\nlos = ["circle"]\n', "unknown factor 'los'"),
])
def test_cli_bad_grid_file_is_one_line_exit_2(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    rc = main(["ablate", "--grid", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert needle in err and "bad.toml" in err


def test_cli_flags_build_the_grid_and_dry_run(capsys, tmp_path):
    rc = main(["ablate", "--data", TINY, "--loss", "circle,triplet", "--weights", "1/0.1,0/1", "--m", "2,4",
               "--heads", "proto,ls", "--shot", "1,5", "--seeds", "2", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "8 training cell(s) x 2 seed(s)" in out
    assert main(["ablate", "--weights", "1", "--dry-run"]) == 2
    assert main(["ablate", "--grid", str(tmp_path / "missing.toml")]) == 2


def test_summary_pairs_by_seed_and_episode_across_training_modes():
    """Synthetic results: metric beats both episodic cells on every seed; the heads tie."""
    import numpy as np

    grid = grid_from_dict({"grid": {"mode": ["metric", "episodic"], "episodic_head": ["proto", "ls"],
                                    "head": ["proto", "ls"], "shot": [1]}, "seeds": [0, 1, 2],
                           "eval": {"episodes": 200, "query": 4}})
    rng = np.random.default_rng(0)
    runs = {}
    for cell in grid.cells():
        for seed in grid.seeds:
            p = 0.8 if cell.factors["mode"] == "metric" else 0.6
            correct = rng.binomial(20, p, size=200).tolist()
            runs[f"{cell.id}/seed{seed}"] = {
                "cell": cell.id, "factors": cell.factors, "seed": seed,
                "records": [{"set": "novel", "transform": "default", "head": h, "shot": 1, "queries": 20,
                             "correct": correct, "accuracy": sum(correct) / 4000} for h in ("proto", "ls")]}
    summary = summarize(grid, {"format": ablate.FORMAT, "runs": runs})
    assert len(summary["rows"]) == 3 * 2 and all(r["seeds"] == 3 for r in summary["rows"])
    metric_row = next(r for r in summary["rows"] if r["factors"]["mode"] == "metric")
    assert abs(metric_row["mean"] - 0.8) < 0.02 and metric_row["ci95_seeds"] > 0
    modes = [c for c in summary["comparisons"] if c["factor"] == "mode"]
    assert len(modes) == 4                                   # 2 episodic heads x 2 eval heads
    assert all(c["verdict"] == "metric > episodic" and c["seeds_agree"] == 3 for c in modes)
    assert all(c["context"]["episodic_head"] in ("proto", "ls") for c in modes)
    heads = [c for c in summary["comparisons"] if c["factor"] == "head"]
    assert heads and all(c["verdict"] == "no significant difference" and c["diff"] == 0 for c in heads)


def test_checkpoint_cells_are_scored_not_trained(tmp_path):
    """Trained encoders as a factor (e.g. one per source domain): scored on every set, paired per set."""
    from episodes import load_data
    from fewshot.training.config import TrainConfig
    from fewshot.training.trainer import train

    data = load_data(TINY, "base")
    paths = []
    for seed in (0, 1):
        cfg = TrainConfig.resolve("glyphs", epochs=1, val_episodes=10, val_query=3, seed=seed, device="cpu")
        paths.append(str(train(cfg, data, None, tmp_path / f"enc{seed}", progress=False).best_path))
    doc = {"name": "ckpt", "seeds": [0], "grid": {"checkpoint": paths, "head": ["proto"], "shot": [1]},
           "eval": {"episodes": 20, "query": 4, "sets": [{"name": "a", "data": TINY, "split": "novel"},
                                                          {"name": "b", "data": "digits"}]}}
    grid = grid_from_dict(doc)
    assert [c.factors["checkpoint"] for c in grid.cells()] == paths
    result = run_ablation(grid, tmp_path / "out", progress=False)
    runs = list(result.results["runs"].values())
    assert len(runs) == 2 and all(r["train_seconds"] < 5 for r in runs)
    assert {rec["set"] for r in runs for rec in r["records"]} == {"a", "b"}
    assert not (tmp_path / "out" / "cells" / grid.cells()[0].id / "seed0" / "best.pt").exists()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "checkpoint" in summary
    with pytest.raises(FewShotError, match="scored, not trained"):
        grid_from_dict({**doc, "seeds": [0, 1]})
    with pytest.raises(FewShotError, match="not a file"):
        grid_from_dict({**doc, "grid": {"checkpoint": [str(tmp_path / "nope.pt")]}})
