"""Runs a person can read at a glance: training curves, TensorBoard events, log-friendly progress,
short figure titles."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from _train_data import digits_set
from PIL import Image

from episodes import EpisodeSpec, sample_episodes
from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import EvalResult, build_heads, score_episodes
from fewshot.figures import TITLE_MAX, compact_labels, short_data_name
from fewshot.progress import LineProgress, progress, progress_mode
from fewshot.training.config import TrainConfig
from fewshot.training.curves import plot_curves, read_metrics, val_series
from fewshot.training.episodic import EpisodicConfig
from fewshot.training.monitor import TENSORBOARD_HINT, CurveWriter, TensorBoardWriter, monitors
from fewshot.training.trainer import train

OMNIGLOT_SPEC = ("omniglot:/home/someone/datasets/omniglot/images_background_small2.zip"
                 "?groups=Japanese_(katakana),Sanskrit,Tagalog (split novel)")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.delenv("FEWSHOT_PROGRESS", raising=False)
    monkeypatch.delenv("FEWSHOT_PROGRESS_EVERY", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, m=4, val_way=3, val_shots=[1, 2], val_episodes=20, val_query=5,
                val_fraction=0.3, lr=0.05)
    return TrainConfig(**{**base, **kw})


TRAIN_ARGV = ["train", "--data", "digits?max_per_class=20", "--image-size", "16", "--epochs", "2",
              "--batch-size", "16", "--m", "4", "--val-way", "2", "--val-shots", "1", "--val-episodes", "20"]


def test_train_in_a_log_leaves_a_short_log_and_curves(tmp_path, capsys):
    """stderr is not a terminal under capsys: no bar redraws, a few lines, and curves.png."""
    out = tmp_path / "run"
    assert main([*TRAIN_ARGV, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert progress_mode(sys.stderr) == "lines"
    assert "\r" not in captured.err and "\x1b" not in captured.err
    lines = captured.err.splitlines()
    assert 4 <= len(lines) <= 10, captured.err           # data, held-out classes, 2 epochs, curves
    assert sum(line.startswith("fewshot train: epoch=") for line in lines) == 2
    assert f"training curves in {out / 'curves.png'}" in captured.err
    assert f"curves: {out / 'curves.png'}" in captured.out
    with Image.open(out / "curves.png") as im:
        assert im.size == (1100, 704)
        assert np.asarray(im.convert("L")).std() > 10     # something is drawn
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert not (out / "tensorboard").exists()


def test_line_progress_writes_plain_lines_at_most_every_n_seconds():
    buf = io.StringIO()
    bar = progress(total=5, desc="epoch 1/2", unit="step", file=buf, every=0, leave=True)
    assert isinstance(bar, LineProgress)
    for _ in range(5):
        bar.set_postfix(loss="0.5", refresh=False)
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in buf.getvalue()     # one per update, no repeat on close
    assert lines[-1].startswith("epoch 1/2: 100% 5/5") and "loss=0.5" in lines[-1]
    quiet = io.StringIO()
    bar = progress(range(100), desc="embed", file=quiet, every=3600)   # long interval, leave=False
    assert sum(1 for _ in bar) == 100 and quiet.getvalue() == ""


def test_progress_mode_follows_the_stream_and_the_environment(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_mode(Tty()) == "bars" and progress_mode(io.StringIO()) == "lines"
    monkeypatch.setenv("FEWSHOT_PROGRESS", "off")
    assert progress_mode(Tty()) == "off"
    buf = io.StringIO()
    bar = progress(total=3, file=buf, every=0, leave=True)
    bar.update(3)
    bar.close()
    assert buf.getvalue() == ""


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    """One tiny training run with the curve writer, and TensorBoard where it is installed."""
    try:
        import tensorboard  # noqa: F401
        has_tb = True
    except ImportError:
        has_tb = False
    out = tmp_path_factory.mktemp("monitored") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monitors(out, title="conv4 on digits", tensorboard=has_tb, config={"epochs": 2}) as callbacks:
            result = train(_cfg(), digits_set(), None, out, progress=False, callbacks=callbacks)
    finally:
        torch.set_num_threads(threads)
    return out, result, callbacks


def test_curves_read_every_trainer_s_rows(monitored_run, tmp_path):
    """The metric trainer's rows (several shots) and the episodic trainer's rows draw alike."""
    out, res, callbacks = monitored_run
    writer = callbacks[0]
    assert isinstance(writer, CurveWriter) and writer.path == out / "curves.png"
    assert writer.path.stat().st_size > 10_000
    series = val_series(res.metrics)
    assert list(series) == ["3-way 1-shot", "3-way 2-shot"]
    epochs, acc, ci = series["3-way 1-shot"]
    assert list(epochs) == [1, 2] and np.allclose(acc, [r["val_3w1s"] for r in res.metrics])
    assert np.all(ci > 0)
    cfg = EpisodicConfig(way=3, shot=1, query=2, episodes_per_step=1, steps_per_epoch=2, epochs=2, seed=0,
                         val_fraction=0.3).train_config()
    cfg.val_way = 3  # 3 held-out digit classes
    episodic = CurveWriter("episodic")
    result = train(cfg, digits_set(), None, tmp_path / "episodic", progress=False, callbacks=[episodic])
    assert episodic.path == tmp_path / "episodic" / "curves.png" and episodic.path.stat().st_size > 10_000
    assert list(val_series(result.metrics)) == ["3-way 1-shot"]
    assert result.metrics[0]["lr"] > result.metrics[-1]["lr"] >= 0          # the cosine schedule
    assert all(r["val_3w1s_ci95"] > 0 for r in result.metrics)
    with pytest.raises(FewShotError, match="no epochs"):
        plot_curves([], tmp_path / "none.png")
    with pytest.raises(FewShotError, match="not a training run folder"):
        read_metrics(tmp_path)


def test_tensorboard_events_hold_the_metrics(monitored_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, res, _ = monitored_run
    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"loss/total", "loss/metric", "loss/ce", "accuracy/train", "optim/lr", "val/3w1s",
            "val/3w2s", "val/3w1s lower", "val/3w1s upper"} <= tags
    for tag, key in (("loss/total", "loss"), ("val/3w2s", "val_3w2s"), ("optim/lr", "lr")):
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert np.allclose([e.value for e in events], [r[key] for r in res.metrics], rtol=1e-6, atol=1e-9)
    upper = [e.value for e in ea.Scalars("val/3w1s upper")]
    assert np.allclose(upper, [r["val_3w1s"] + r["val_3w1s_ci95"] for r in res.metrics], atol=1e-6)


def test_tensorboard_missing_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    with pytest.raises(FewShotError, match="pip install"):
        TensorBoardWriter(tmp_path / "tb")
    assert main([*TRAIN_ARGV, "--out", str(tmp_path / "run"), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(TENSORBOARD_HINT) and not (tmp_path / "run" / "last.pt").exists()


def test_figure_titles_name_the_data_briefly(tmp_path, monkeypatch):
    assert short_data_name(OMNIGLOT_SPEC) == "omniglot small2, 3 groups (novel)"
    assert short_data_name("miniimagenet:/data/sets/mini-imagenet (split val)") == "miniimagenet (val)"
    assert short_data_name("glyphs?alphabets=5&per_class=8 (split base)") == "glyphs (base)"
    long = "folder:/very/long/local/path/" + "x" * 80 + " (split novel)"
    assert len(short_data_name(long)) <= TITLE_MAX and "/very" not in short_data_name(long)
    shown, shared = compact_labels([f"Tagalog/character{i:02d}" for i in range(1, 18)], 12)
    assert shown[:2] == ["01", "02"] and shared == "Tagalog/character…"

    # the accuracy-vs-shot figure of a real scoring (raw digit pixels, two heads) gets the short title
    from fewshot.evaluation import report

    data = digits_set(per_class=30)
    feats = data.images.flatten(1).float()
    eps = sample_episodes(data, EpisodeSpec(5, 1, 5), 30, seed=0)
    acc = score_episodes(feats, eps, build_heads(["proto", "nn"]))
    result = EvalResult(["proto", "nn"], [1], 5, 5, {(h, 1): acc[h] for h in acc},
                        dataset={"name": OMNIGLOT_SPEC})
    titles = []
    real_save = report.save_figure

    def capture(fig, path, dpi=120):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        return real_save(fig, path, dpi)

    monkeypatch.setattr(report, "save_figure", capture)
    files = report.write_report(result, tmp_path / "report")
    assert titles == ["omniglot small2, 3 groups (novel): 5-way"]
    assert OMNIGLOT_SPEC in (tmp_path / "report" / "results.md").read_text()   # the full spec stays
    assert json.loads(files["results.json"].read_text())["dataset"]["name"] == OMNIGLOT_SPEC


def test_tensorboard_recipe_key_and_flag(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('epochs = 1\ntensorboard = true\n')
    assert TrainConfig.resolve(str(recipe)).tensorboard is True
    assert TrainConfig.resolve(str(recipe), tensorboard=False).tensorboard is False
    assert TrainConfig.resolve(None).tensorboard is False
