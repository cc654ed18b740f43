"""Fault injection for training: Ctrl-C at every point of a step, a kill between every pair of
writes, non-finite weights, orphaned temporary files, the umask, and self-contained checkpoints.

Every interrupted or killed run is resumed and compared bit for bit (weights, optimizer state,
base means, best record, metrics rows) with one uninterrupted run of the same seed on CPU.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from _train_data import digits_set, one_thread, tiny_config  # noqa: F401 (an autouse fixture)

from episodes.atomic import _HOST, atomic_write_text, clean_orphans
from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.models.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from fewshot.models.encoders import Encoder, build_encoder
from fewshot.training.augment import Augment
from fewshot.training.config import load_recipe
from fewshot.training.trainer import train

STEPS = 5  # steps per epoch: 84 training images, batch 16
TIMING = ("img_per_s", "epoch_time_s")


def _cfg(**kw):
    return tiny_config(**{"val_episodes": 10, "encoder_args": {"width": 16}, **kw})


@pytest.fixture(scope="module")
def sets():
    return digits_set(per_class=12).split_classes(0.3, seed=0)


@pytest.fixture(scope="module")
def reference(sets, tmp_path_factory):
    """The uninterrupted run every faulty run must end up equal to."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    train(_cfg(), *sets, out, progress=False)
    return out


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _assert_same_run(ref: Path, run: Path) -> None:
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(ref / name), load_checkpoint(run / name)
        assert a["hash"] == b["hash"] and a["epoch"] == b["epoch"] and a["best"] == b["best"], name
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        assert torch.equal(a["base_mean"], b["base_mean"]), name
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
                                              for i in sa), name
        assert [{k: v for k, v in r.items() if k not in TIMING} for r in b["metrics"]] == _rows(ref)
    assert _rows(run) == _rows(ref)
    assert not list(run.glob(".*tmp*"))


# ------------------------------------------------------------- interrupts inside a step
def _after(monkeypatch, point: str, call: int, action):
    """Run ``action`` right after the ``call``-th training-time occurrence of ``point``."""
    seen = {"n": 0}

    def hit():
        seen["n"] += 1
        if seen["n"] == call:
            action()

    def wrap(original, training_only=False):
        def wrapper(self, *args, **kw):
            out = original(self, *args, **kw)
            if not training_only or self.training:
                hit()
            return out
        return wrapper

    if point == "augment":
        monkeypatch.setattr(Augment, "__call__", wrap(Augment.__call__))
    elif point == "forward":
        monkeypatch.setattr(Encoder, "forward", wrap(Encoder.forward, training_only=True))
    elif point == "backward":
        monkeypatch.setattr(torch.Tensor, "backward", wrap(torch.Tensor.backward))
    elif point == "inside-optimizer":  # the update applied, the step's post-hooks not yet run
        import torch.optim.sgd as sgd

        def inside(original):
            def update(*args, **kw):
                original(*args, **kw)
                hit()
            return update
        for kernel in ("_fused_sgd", "_multi_tensor_sgd"):   # the trainer's (fused on the CPU) or foreach
            monkeypatch.setattr(sgd, kernel, inside(getattr(sgd, kernel)))
    elif point == "optimizer":
        from torch.optim.optimizer import register_optimizer_step_post_hook
        return register_optimizer_step_post_hook(lambda *a: hit())
    elif point == "scheduler":  # the scheduler steps once when built: one more call
        seen["n"] = -1
        monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step",
                            wrap(torch.optim.lr_scheduler.LambdaLR.step))
    return None


def _raise():
    raise KeyboardInterrupt


def _sigint():
    os.kill(os.getpid(), signal.SIGINT)


def _sigint_twice():
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)


# (point, action, where last.pt must stand after the interrupt: (epoch, step))
INTERRUPTS = [
    ("augment", _raise, (1, 2)),            # rolled back: step 2 of epoch 2 is redone
    ("forward", _raise, (1, 2)),            # batch-norm statistics restored
    ("backward", _raise, (1, 2)),
    ("inside-optimizer", _raise, (1, 0)),   # half an update: nothing written, epoch 1's state stays
    ("optimizer", _raise, (1, 3)),          # the update is in: the step is finished, then saved
    ("scheduler", _raise, (1, 3)),
    ("augment", _sigint, (1, 3)),           # Ctrl-C: the step finishes, saved at its end
    ("forward", _sigint, (1, 3)),
    ("backward", _sigint, (1, 3)),
    ("optimizer", _sigint, (1, 3)),
    ("scheduler", _sigint, (1, 3)),
    ("backward", _sigint_twice, (1, 2)),    # a second Ctrl-C stops at once, still consistent
]


class _Notes:
    """A callback that keeps the run's notes (``on_message``)."""

    def __init__(self):
        self.lines: list[str] = []

    def on_message(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.parametrize("point,action,saved_at", INTERRUPTS,
                         ids=[f"{p}-{a.__name__.strip('_')}" for p, a, _ in INTERRUPTS])
def test_interrupt_anywhere_in_a_step_resumes_bit_exact(sets, reference, tmp_path, monkeypatch,
                                                        point, action, saved_at):
    run, notes = tmp_path / "run", _Notes()
    with monkeypatch.context() as mp:
        handle = _after(mp, point, STEPS + 3, action)  # step 2 (0-based) of epoch 2
        try:
            with pytest.raises(KeyboardInterrupt):
                train(_cfg(), *sets, run, progress=False, callbacks=[notes])
        finally:
            if handle is not None:
                handle.remove()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    saved = load_checkpoint(run / "last.pt")
    assert (saved["sampler"]["epoch"], saved["sampler"]["step"]) == saved_at
    assert len(notes.lines) == 1 and notes.lines[0].startswith("interrupted")
    train(_cfg(resume="auto"), *sets, run, progress=False)
    _assert_same_run(reference, run)


# ----------------------------------------------------------------- kills between writes
class _Killed(BaseException):
    """Stands for kill -9: no except clause of the toolkit catches it."""


WRITES = 10  # config, metrics; per epoch last, best, metrics; at the end best, last (base means)


@pytest.mark.parametrize("k", range(1, WRITES + 1))
def test_kill_after_any_write_then_resume_is_consistent(sets, reference, tmp_path, monkeypatch, k):
    run = tmp_path / "run"
    replace, count = os.replace, {"n": 0}

    def killing_replace(src, dst, *a, **kw):
        replace(src, dst, *a, **kw)
        if Path(dst).parent == run:
            count["n"] += 1
            if count["n"] == k:
                raise _Killed

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", killing_replace)
        with pytest.raises(_Killed):
            train(_cfg(), *sets, run, progress=False)
    for ckpt in run.glob("*.pt"):  # whatever is there is whole and finite
        load_checkpoint(ckpt)
    if (run / "last.pt").exists():
        train(_cfg(resume="auto"), *sets, run, progress=False)
    else:  # killed before the first commit: nothing to resume, a fresh run
        train(_cfg(), *sets, run, progress=False)
    _assert_same_run(reference, run)


def test_resume_drops_a_damaged_metrics_line_and_rebuilds_best(sets, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "loss": 0.')  # cut mid-write
    (run / "best.pt").unlink()
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped 1 damaged line\(s\) \(line 3\)"):
        train(_cfg(resume="auto"), *sets, run, progress=False)
    _assert_same_run(reference, run)


def test_resume_refuses_a_best_that_cannot_be_rebuilt(sets, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    last = load_checkpoint(run / "last.pt")
    last["best"] = {"epoch": 1, "accuracy": 0.5, "hash": "0" * 16}  # a best.pt that is not there
    save_checkpoint(run / "last.pt", last)
    with pytest.raises(FewShotError, match=r"best.pt: does not hold the best epoch \(1, accuracy 0.5000\)"):
        train(_cfg(resume="auto"), *sets, run, progress=False)


def test_fresh_run_removes_checkpoints_of_an_earlier_run(sets, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(reference, run)

    def stop(*a, **kw):
        raise _Killed

    monkeypatch.setattr(Augment, "__call__", stop)
    with pytest.raises(_Killed):
        train(_cfg(), *sets, run, progress=False)
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert (run / "metrics.jsonl").read_text() == ""


# ----------------------------------------------------------------------- non-finite
def _good_checkpoint_named(message: str) -> None:
    """The stop message names a checkpoint that really is finite, or says none is kept."""
    if "no checkpoint was written yet" in message:
        return
    path = message.split("the last good checkpoint ")[1].split(" (epoch")[0]
    load_checkpoint(path)


@pytest.mark.parametrize("lr", [300.0, 1000.0])
def test_huge_lr_stops_and_never_writes_a_non_finite_checkpoint(sets, tmp_path, lr):
    run = tmp_path / "run"
    with pytest.raises(FewShotError, match="became") as info:
        train(_cfg(lr=lr, epochs=3), *sets, run, progress=False)
    _good_checkpoint_named(str(info.value))
    for ckpt in run.glob("*.pt"):
        load_checkpoint(ckpt)  # refuses non-finite values


def test_non_finite_buffer_stops_naming_it_and_the_good_checkpoint(sets, tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = Encoder.forward

    def poisoning(self, x):
        out = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == STEPS + 2:
                self.backbone[0][1].running_var.data.fill_(float("inf"))
        return out

    monkeypatch.setattr(Encoder, "forward", poisoning)
    with pytest.raises(FewShotError) as info:
        train(_cfg(), *sets, run, progress=False)
    msg = str(info.value)
    assert "weights became non-finite (backbone.0.1.running_var) by epoch 2 step 2" in msg
    assert f"the last good checkpoint {run / 'last.pt'} (epoch 1, step 0) is finite" in msg
    _good_checkpoint_named(msg)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_loading_refuses_a_non_finite_checkpoint(reference, tmp_path, capsys):
    ckpt = load_checkpoint(reference / "best.pt")
    ckpt["model"]["backbone.1.1.running_var"][0] = float("inf")
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(FewShotError, match="non-finite values .*backbone.1.1.running_var"):
        load_encoder(bad)
    with pytest.raises(FewShotError, match="non-finite"):
        load_encoder(ckpt)  # a dict, e.g. from a classifier file
    code = main(["eval", "--checkpoint", str(bad), "--data", "digits", "--episodes", "5", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "non-finite" in err and str(bad) in err


def test_save_refuses_non_finite_weights(reference, tmp_path):
    ckpt = load_checkpoint(reference / "last.pt")
    shutil.copy(reference / "last.pt", tmp_path / "last.pt")
    ckpt["model"]["classifier.weight"][0, 0] = float("nan")
    with pytest.raises(FewShotError, match="non-finite values .*classifier.weight.*not written"):
        save_checkpoint(tmp_path / "last.pt", ckpt)
    assert load_checkpoint(tmp_path / "last.pt")["hash"] == ckpt["hash"]  # the old file is intact


# ------------------------------------------------------------------- files and options
def test_orphan_temporary_files_are_cleaned_on_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    orphan = tmp_path / f".last.pt.{_HOST}~{pid}~.abcd1234.tmp"
    live = tmp_path / f".best.pt.{_HOST}~{os.getpid()}~.efgh5678.tmp"
    other_host = tmp_path / f".best.pt.elsewhere~{pid}~.ijkl9012.tmp"
    for f in (orphan, live, other_host):
        f.write_bytes(b"half a checkpoint")
    atomic_write_text(tmp_path / "metrics.jsonl", "")
    assert not orphan.exists() and live.exists() and other_host.exists()
    assert clean_orphans(tmp_path) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_checkpoint(tmp_path / "b.pt", {"model": {}, "encoder": {}})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("line,key", [('lr = "fast"', "lr must be a number, got 'fast'"),
                                      ('epochs = "three"', "epochs must be an integer"),
                                      ("val_shots = 5", "val_shots must be a list, got 5"),
                                      ('augment = "strong"', "augment must be a table of options"),
                                      ("download = 1", "download must be true or false")])
def test_recipe_values_of_the_wrong_type_name_file_and_key(tmp_path, capsys, line, key):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'encoder = "conv4"\n{line}\n')
    with pytest.raises(FewShotError, match=f"^{recipe}: {key}"):
        load_recipe(str(recipe))
    code = main(["train", "--data", "glyphs", "--recipe", str(recipe), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(recipe) in err and key in err
    assert not (tmp_path / "r").exists()


def test_negative_seed_is_a_one_line_error(tmp_path, capsys):
    code = main(["train", "--data", "glyphs", "--seed", "-1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("seed must be a non-negative integer, got -1")


# ------------------------------------------------------------------ self-contained
@contextmanager
def _no_network(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("tried to download")
    with monkeypatch.context() as mp:
        mp.setattr(torch.hub, "load_state_dict_from_url", refuse)
        yield


def test_checkpoint_does_not_need_its_weights_file_nor_the_network(sets, tmp_path, monkeypatch):
    import torchvision
    weights = tmp_path / "init.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    run = tmp_path / "run"
    resnet = dict(encoder="resnet18", encoder_args={"weights": str(weights)}, epochs=1, val_episodes=5,
                  momentum=0.0)  # no momentum buffers: smaller checkpoints, a faster test
    train(_cfg(**resnet), *sets, run, progress=False)
    weights.unlink()
    ckpt = load_checkpoint(run / "best.pt")
    assert "weights" not in ckpt["encoder"]["kwargs"]
    with _no_network(monkeypatch):
        model, _ = load_encoder(run / "best.pt")
        assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
        # an older checkpoint whose spec still says where its weights came from, or to download
        ckpt["encoder"]["kwargs"].update(weights=str(weights), download=True)
        load_encoder(ckpt)
        # and resuming does not read the (gone) weights file either
        train(_cfg(**resnet, resume="auto"), *sets, run, progress=False)
    spec = build_encoder("resnet18", in_channels=1, num_classes=3, download=False).spec
    assert "download" not in spec["kwargs"]


def test_a_second_run_in_a_live_run_folder_is_refused(tmp_path):
    """Two runs writing one folder would interleave their checkpoints: the second is refused."""
    from fewshot.errors import FewShotError
    from fewshot.training.runlock import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        assert (run / ".lock").read_text() == str(os.getpid())
        with pytest.raises(FewShotError, match="another run .* is writing to this folder"):
            with RunLock(run):
                pass
        from fewshot.training.config import TrainConfig
        cfg = TrainConfig(epochs=1, batch_size=16, m=4, val_way=3, val_shots=[1], val_episodes=5,
                          device="cpu")
        with pytest.raises(FewShotError, match="another run"):
            train(cfg, digits_set(), None, run, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert not run.exists()  # created for the run, left empty: removed
    (tmp_path / "kept").mkdir()
    with RunLock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / ".lock").exists()
