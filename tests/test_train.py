import json
from pathlib import Path

import pytest
import torch
from _train_data import digits_set, one_thread, tiny_config  # noqa: F401 (an autouse fixture)
from pytorch_metric_learning import losses

from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.evaluation.features import embed
from fewshot.evaluation.tta import TTA, checkpoint_tta, override_tta
from fewshot.models.checkpoint import load_checkpoint, load_encoder
from fewshot.models.preprocess import Preprocess
from fewshot.training.augment import Augment
from fewshot.training.classes import mirror_classes, rotate_classes, synthetic_classes
from fewshot.training.config import RECIPES, TrainConfig, load_recipe
from fewshot.training.trainer import train, update_kernel

_cfg = tiny_config


def _weights(path):
    return load_checkpoint(path)["model"]


def test_train_writes_run_and_checkpoint_loads(tmp_path):
    data = digits_set()
    res = train(_cfg(epochs=1), data, None, tmp_path / "run", progress=False)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names >= {"config.json", "metrics.jsonl", "last.pt", "best.pt"}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    assert len(lines) == 1 and {"loss", "metric_loss", "ce_loss", "img_per_s", "val_3w1s"} <= set(row)
    assert 0 <= res.val_accuracy <= 1 and len(res.held_out_classes) == 3
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["held_out_classes"] == res.held_out_classes
    model, info = load_encoder(res.best_path)
    assert not model.training and info["distance"] == "cosine" and len(info["hash"]) == 16
    assert info["base_mean"].shape == (model.embedding_dim,) and len(info["base_classes"]) == 7
    assert info["preprocess"].image_size == (16, 16)


def test_same_seed_same_weights_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    data, val = digits_set().split_classes(0.3, seed=0)
    full = train(_cfg(), data, val, tmp_path / "full", progress=False)
    again = train(_cfg(), data, val, tmp_path / "again", progress=False)
    w_full = _weights(full.last_path)
    assert all(torch.equal(w_full[k], v) for k, v in _weights(again.last_path).items())

    # Interrupt (Ctrl-C) in the middle of epoch 2, then resume: same final weights.
    calls = {"n": 0}
    original = Augment.__call__

    def interrupting(self, x, generator=None):
        calls["n"] += 1
        if calls["n"] == 8 + 5:  # 8 steps per epoch (140 images): step 5 of epoch 2
            raise KeyboardInterrupt
        return original(self, x, generator)

    monkeypatch.setattr(Augment, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), data, val, tmp_path / "cut", progress=False)
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["sampler"]["epoch"] == 1 and saved["sampler"]["step"] == 4
    monkeypatch.setattr(Augment, "__call__", original)
    resumed = train(_cfg(resume="auto"), data, val, tmp_path / "cut", progress=False)
    w_res = _weights(resumed.last_path)
    assert all(torch.equal(w_full[k], w_res[k]) for k in w_full)
    assert len(resumed.metrics) == 2


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path, monkeypatch):
    data, val = digits_set().split_classes(0.3, seed=0)
    full = train(_cfg(sampler="random"), data, val, tmp_path / "full", progress=False)
    calls = {"n": 0}
    original = Augment.__call__

    def interrupting(self, x, generator=None):
        calls["n"] += 1
        if calls["n"] == 9:  # first step of epoch 2: last.pt of epoch 1 stays
            raise KeyboardInterrupt
        return original(self, x, generator)

    monkeypatch.setattr(Augment, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(sampler="random"), data, val, tmp_path / "cut", progress=False)
    monkeypatch.setattr(Augment, "__call__", original)
    res = train(_cfg(sampler="random", resume="auto"), data, val, tmp_path / "cut", progress=False)
    a, b = _weights(full.last_path), _weights(res.last_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_update_kernel_fused_on_cpu_foreach_where_torch_has_no_fused_kernel():
    cpu = [{"params": [torch.nn.Parameter(torch.zeros(3))]}]
    meta = [{"params": [torch.nn.Parameter(torch.zeros(3, device="meta"))]}]
    assert update_kernel(cpu) == {"fused": True}
    assert update_kernel(meta) == {"foreach": True}
    # the fused update is the foreach one to the bit (what keeps earlier runs reproducible)
    weights = {}
    for kernel in ({"fused": True}, {"foreach": True}):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(257, 33))
        opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, **kernel)
        for step in range(5):
            w.grad = torch.randn(257, 33, generator=torch.Generator().manual_seed(step))
            opt.step()
        weights[next(iter(kernel))] = w.detach()
    assert torch.equal(weights["fused"], weights["foreach"])


def test_resume_refuses_other_encoder_or_class_count(tmp_path):
    data, val = digits_set().split_classes(0.3, seed=0)
    train(_cfg(epochs=1), data, val, tmp_path / "run", progress=False)
    with pytest.raises(FewShotError, match="width"):
        train(_cfg(resume="auto", encoder_args={"width": 32}), data, val, tmp_path / "run", progress=False)
    fewer = data.select_classes(list(range(6)))
    with pytest.raises(FewShotError, match="num_classes 7 .* vs 6"):
        train(_cfg(resume="auto"), fewer, val, tmp_path / "run", progress=False)


class _NaNAfter(losses.ContrastiveLoss):
    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, *args, **kw):
        self.calls += 1
        value = super().forward(*args, **kw)
        return value * float("nan") if self.calls > self.after else value


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data, val = digits_set().split_classes(0.3, seed=0)
    with pytest.raises(FewShotError, match="loss became nan at epoch 2 step 3"):
        train(_cfg(), data, val, tmp_path / "run", progress=False, loss=_NaNAfter(8 + 2))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values()
                                      if v.is_floating_point())


def test_proxy_loss_parameters_are_trained_and_pure_ce(tmp_path):
    data, val = digits_set().split_classes(0.3, seed=0)
    res = train(_cfg(epochs=1, loss="arcface", miner="none"), data, val, tmp_path / "a", progress=False)
    ckpt = load_checkpoint(res.last_path)
    assert ckpt["loss_state"]["W"].shape[1] == 7 and len(ckpt["optimizer"]["param_groups"]) == 2
    res = train(_cfg(epochs=1, w_metric=0, sampler="random", distance="euclidean"), data, val,
                tmp_path / "b", progress=False)
    assert res.metrics[0]["metric_loss"] == 0 and load_encoder(res.best_path)[1]["distance"] == "euclidean"


def test_bad_configs_fail_before_training(tmp_path):
    data = digits_set()
    with pytest.raises(FewShotError, match="not divisible by m=4"):
        train(_cfg(batch_size=18), data, None, tmp_path, progress=False)
    small = data.subset([i for i in range(len(data)) if not (data.labels[i] == 0 and i % 20 > 2)])
    with pytest.raises(FewShotError, match="m=4 is larger than the smallest class ..digit0. has 3 images"):
        train(_cfg(), small, digits_set(), tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--batch-size", "30"], "not divisible by m=4"),
    (["--loss", "hinge"], "unknown loss 'hinge'; choose one of circle"),
    (["--miner", "x"], "unknown miner"),
    (["--encoder", "vgg"], "unknown encoder 'vgg'; choose one of conv4, resnet12"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
])
def test_cli_bad_config_exits_2(tmp_path, capsys, argv, msg):
    code = main(["train", "--data", "glyphs", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and len(err.splitlines()) == 1


def test_recipes_load_and_flags_override():
    assert {"glyphs", "miniimagenet", "omniglot"} <= set(RECIPES)
    assert load_recipe("miniimagenet")["encoder"] == "resnet12"
    cfg = TrainConfig.resolve("glyphs", lr=0.2, augment={"degrees": 3.0}, epochs=None)
    assert cfg.lr == 0.2 and cfg.augment["degrees"] == 3.0 and cfg.epochs == load_recipe("glyphs")["epochs"]
    assert cfg.augment["translate"] == load_recipe("glyphs")["augment"]["translate"]


def test_augment_seeded_batched_and_preprocess_roundtrip():
    x = torch.rand(8, 3, 20, 20)
    aug = Augment(degrees=20, shear=10, elastic=0.05, flip=True, brightness=0.3, contrast=0.3, saturation=0.3)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    ident = Augment(mode="affine", degrees=0, translate=0, scale=(1, 1))
    assert torch.allclose(ident(x, torch.Generator()), x, atol=1e-5)
    crop = Augment(mode="crop", scale=(0.3, 1.0), flip=True)(x, torch.Generator().manual_seed(0))
    assert crop.shape == x.shape
    with pytest.raises(FewShotError, match="unknown augmentation options"):
        Augment.from_dict({"blur": 1})
    pre = Preprocess.fit((torch.rand(10, 1, 12, 12) * 255).to(torch.uint8), image_size=8, channels=3)
    out = pre(torch.zeros(2, 1, 12, 12, dtype=torch.uint8))
    assert out.shape == (2, 3, 8, 8) and Preprocess.from_dict(pre.to_dict()) == pre


def test_erase_cuts_one_seeded_square_out_of_a_share_of_the_images():
    x = torch.ones(400, 1, 20, 20)
    geometric = Augment(degrees=10)
    off = geometric(x, torch.Generator().manual_seed(1))
    erased = Augment(degrees=10, erase=0.5)(x, torch.Generator().manual_seed(1))
    # erase draws after the geometric pass: the same geometry, then holes in about half the images
    holes = (off - erased).flatten(1).gt(0.5).float().mean(1)
    assert torch.equal(erased, off.masked_fill((off - erased).abs() > 0, 0.0))
    assert 0.4 < float((holes > 0).float().mean()) < 0.6
    assert float(holes.max()) <= 0.17   # at most 40% of the side, squared
    again = Augment(degrees=10, erase=0.5)(x, torch.Generator().manual_seed(1))
    assert torch.equal(erased, again)
    assert "erase" not in Augment().to_dict() and Augment(erase=0.2).to_dict()["erase"] == 0.2
    with pytest.raises(FewShotError, match="erase is a probability"):
        Augment(erase=1.5)


def test_rotate_classes_quadruples_classes():
    data = digits_set(per_class=4)
    rot = rotate_classes(data)
    assert rot.num_classes == 40 and len(rot) == 4 * len(data)
    assert torch.equal(rot.images[len(data)], torch.rot90(data.images[0], 1, (1, 2)))


def test_mirror_classes_double_classes_after_rotations():
    data = digits_set(per_class=4)
    both = mirror_classes(rotate_classes(data))
    assert both.num_classes == 80 and len(both) == 8 * len(data)
    assert torch.equal(both.images[4 * len(data)], torch.flip(data.images[0], (2,)))
    assert both.class_names[both.labels[4 * len(data)]].endswith("@mirror")
    assert len(set(both.class_names)) == 80


def test_extra_synthetic_classes_co_train_with_real_ones(tmp_path):
    data = digits_set(per_class=8)
    synth = synthetic_classes(6, data, per_class=5, seed=0)
    assert synth.num_classes == 6 and len(synth) == 30 and synth.image_size == data.image_size
    assert synth.channels == 1 and synth.images.dtype == torch.uint8 and int(synth.images.max()) == 255
    assert all(n.startswith("synthetic/") for n in synth.class_names)
    assert torch.equal(synth.images, synthetic_classes(6, data, per_class=5, seed=0).images)
    assert not torch.equal(synth.images, synthetic_classes(6, data, per_class=5, seed=1).images)
    # thinner strokes: less ink than the glyphs as generated
    thick = synthetic_classes(6, data, per_class=5, thin=1.0)
    assert synth.images.float().mean() < thick.images.float().mean()
    train_set, val = data.split_classes(0.3, seed=0)
    res = train(_cfg(epochs=1, extra_synthetic_classes=6, synthetic_per_class=5), train_set, val,
                tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["num_classes"] == 7 + 6
    model, info = load_encoder(res.best_path)
    assert model.num_classes == 13 and len(info["base_classes"]) == 13
    assert info["base_mean"].shape == (model.embedding_dim,)
    with pytest.raises(FewShotError, match="synthetic"):
        synthetic_classes(0, data)


def test_validation_tta_is_seeded_and_reported_beside_the_plain_figure(tmp_path):
    data, val = digits_set(per_class=8).split_classes(0.3, seed=0)
    res = train(_cfg(epochs=2, val_tta=4, val_tta_every=0), data, val, tmp_path / "run", progress=False)
    first, row = res.metrics
    assert "val_3w1s_plain" in first and "val_accuracy" not in first  # TTA only at the last epoch
    assert {"val_3w1s", "val_3w1s_plain", "val_3w1s_plain_ci95"} <= set(row)
    assert row["val_accuracy"] == row["val_3w1s"] == res.val_accuracy
    model, info = load_encoder(res.best_path)
    assert info["tta"] == TTA(4, {**info["tta"]["augment"]}, 0, True).to_dict()  # what validation used
    pre = info["preprocess"]
    plain = embed(model, val.images, pre, device="cpu", progress=False)
    a = embed(model, val.images, pre, device="cpu", progress=False, tta=TTA(3, seed=1))
    assert torch.equal(a, embed(model, val.images, pre, device="cpu", progress=False, tta=TTA(3, seed=1)))
    assert not torch.allclose(a, plain) and a.shape == plain.shape
    with pytest.raises(FewShotError, match="val-tta"):
        train(_cfg(val_tta=0), data, val, tmp_path / "bad", progress=False)


def test_eval_tta_sets_what_the_checkpoint_records_and_validation_keeps_its_own():
    from fewshot.evaluation.tta import tta_from_config
    from fewshot.training.config import check_config
    from fewshot.training.validation import Validation

    cfg = _cfg(val_tta=2, val_tta_symmetries=2, eval_tta=3, eval_tta_symmetries=4,
               val_tta_augment={"elastic": 0.05})
    check_config(cfg)
    recorded = tta_from_config(cfg.to_dict(), 1, "cosine")
    own = Validation(cfg, digits_set(per_class=8), "cosine", 1).tta
    assert (recorded.views, recorded.symmetries, own.views, own.symmetries) == (3, 4, 2, 2)
    assert recorded.augment == own.augment and own.augment["elastic"] == 0.05
    unset = tta_from_config(_cfg(val_tta=2).to_dict(), 1, "cosine")   # no eval_tta: validation's
    assert (unset.views, unset.symmetries) == (2, 1)
    with pytest.raises(FewShotError, match="eval-tta must be a positive integer, got 0"):
        check_config(_cfg(eval_tta=0))
    with pytest.raises(FewShotError, match="eval-tta-symmetries must be 1, 2, 4 or 8, got 3"):
        check_config(_cfg(eval_tta_symmetries=3))


def test_validation_with_symmetries_is_the_figure_evaluation_reproduces(tmp_path):
    from episodes import EpisodeSpec, sample_episodes
    from fewshot.evaluation.features import transform
    from fewshot.training.objectives import episode_accuracy
    from fewshot.training.validation import Validation

    data, val = digits_set(per_class=8).split_classes(0.3, seed=0)
    res = train(_cfg(epochs=1, val_tta=2, val_tta_symmetries=4), data, val, tmp_path / "run", progress=False)
    row = res.metrics[-1]
    model, info = load_encoder(res.best_path)
    tta = checkpoint_tta(info)
    assert (tta.views, tta.symmetries) == (2, 4) and info.get("transform") is None
    eps = sample_episodes(val, EpisodeSpec(3, 1, 5), 20, seed=0, drop_small=True)
    feats = embed(model, val.images, info["preprocess"], device="cpu", progress=False, tta=tta)
    assert feats.shape[1] == 4 * model.embedding_dim
    got = episode_accuracy(transform(feats, "l2", blocks=4), eps)   # evaluation's default for cosine
    assert float(got.mean()) == pytest.approx(row["val_3w1s"], abs=1e-6)
    # the blocks are transformed one by one, as evaluation does
    assert Validation(_cfg(val_tta=2, val_tta_symmetries=4), val, "cosine", 1).transform == "l2"
    assert Validation(_cfg(val_tta=2), val, "cosine", 1).transform is None


def test_omniglot_recipe_runs_on_real_omniglot(omniglot_dir, tmp_path):
    """The shipped Omniglot recipe end to end on real data (ink framing, rotation + mirror classes,
    per-block widths, TTA validation with views and symmetries), shortened: one small1 alphabet,
    one epoch, one small2 alphabet. The run frames the 105x105 drawings, records the framing, and
    evaluation's code path (``embed`` with the checkpoint's preprocessing on full-size drawings)
    reproduces its figures, plain and with the recorded views and symmetries."""
    from episodes import EpisodeSpec, load_data, sample_episodes
    from fewshot.evaluation.features import transform
    from fewshot.training.objectives import episode_accuracy

    out = tmp_path / "omni"
    val_spec = f"omniglot:{omniglot_dir}/images_background_small2.zip?groups=Sanskrit"
    code = main(["train", "--data", f"omniglot:{omniglot_dir}/images_background_small1.zip?groups=Latin",
                 "--recipe", "omniglot", "--epochs", "1", "--val-episodes", "20", "--quiet",
                 "--val", val_spec, "--out", str(out)])
    assert code == 0
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["num_classes"] == 8 * 26                          # 26 Latin letters x 8 symmetries
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["val_20w1s"] > 0.1 and row["val_20w1s_plain"] > 0.1    # chance is 0.05
    model, info = load_encoder(out / "best.pt")
    assert model.embedding_dim == 3 * 3 * 256
    pre = info["preprocess"]
    assert pre.frame == 0.8 and pre.image_size == (28, 28)
    val = load_data(val_spec, None)
    assert val.image_size == (105, 105)                                # evaluation reads full size
    eps = sample_episodes(val, EpisodeSpec(20, 1, 5), 20, seed=0, within_group=True, drop_small=True)
    feats = transform(embed(model, val, pre, batch_size=512, progress=False), info["transform"])
    assert float(episode_accuracy(feats, eps).mean()) == pytest.approx(row["val_20w1s_plain"], abs=1e-6)
    recorded = checkpoint_tta(info)                                    # evaluation's default: eval_tta
    assert (recorded.views, recorded.symmetries, recorded.augment["elastic"]) == (64, 8, 0.05)
    tta = override_tta(recorded, 32, {"symmetries": 4})               # what the run validated with
    views = transform(embed(model, val, pre, batch_size=512, progress=False, tta=tta), info["transform"],
                      blocks=tta.symmetries)
    assert float(episode_accuracy(views, eps).mean()) == pytest.approx(row["val_20w1s"], abs=1e-6)
    unframed = Preprocess(28, 1, pre.mean, pre.std)                   # the same encoder, unframed input
    assert not torch.allclose(feats, transform(embed(model, val, unframed, batch_size=512, progress=False),
                                               info["transform"]), atol=1e-3)


def test_train_without_a_folder_writes_a_temporary_one_that_the_result_names(tmp_path, monkeypatch):
    import shutil
    import tempfile
    monkeypatch.chdir(tmp_path)
    res = train(_cfg(epochs=1, val_episodes=5), digits_set(), progress=False)
    try:
        assert res.out_dir.parent == Path(tempfile.gettempdir())
        assert res.out_dir.name.startswith("fewshot-train-")
        assert res.best_path.exists() and res.last_path.parent == res.out_dir
        assert list(tmp_path.iterdir()) == []                         # nothing behind the caller's back
    finally:
        shutil.rmtree(res.out_dir)


def test_train_from_a_config_alone_loads_the_data_and_the_recipe_validation(tmp_path):
    spec = "glyphs?alphabets=5&per_class=6"
    cfg = _cfg(data=spec, val=spec + "&split=val", epochs=1, batch_size=24, val_episodes=5, val_query=3)
    res = train(cfg, out_dir=tmp_path / "run", progress=False)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert res.held_out_classes is None and "(split base)" in resolved["data"]
    assert resolved["validation"].startswith(spec + "&split=val") and cfg.split == "base"
    # a recipe's validation data that is not there: a warning, and held-out base classes instead
    cfg = _cfg(data=spec, val=f"omniglot:{tmp_path}/no_such_archive.zip", epochs=1, batch_size=24,
               val_episodes=5, val_query=3)
    with pytest.warns(UserWarning, match="recipe validation data unavailable"):
        res = train(cfg, out_dir=tmp_path / "fallback", progress=False)
    assert cfg.val is None and len(res.held_out_classes) == 18
    with pytest.raises(FewShotError, match="no training data"):
        train(_cfg(), out_dir=tmp_path / "none", progress=False)


class _Hooks:
    def __init__(self):
        self.calls = []

    def on_message(self, text):
        self.calls.append(("message", text.split(" ")[0]))

    def on_epoch_begin(self, epoch, epochs, steps, first):
        self.calls.append(("begin", epoch, epochs, steps, first))

    def on_step_end(self, step, logs):
        assert logs["loss"] > 0 and logs["img_per_s"] > 0
        self.calls.append(("step", step))

    def on_epoch_end(self, row, metrics, out_dir):
        self.calls.append(("end", row["epoch"], len(metrics)))


def test_callbacks_see_every_hook_and_the_printer_writes_lines(tmp_path):
    import io

    from fewshot.training.monitor import ProgressPrinter
    hooks, buf = _Hooks(), io.StringIO()
    train(_cfg(epochs=2, val_episodes=5), digits_set(), None, tmp_path / "run", progress=False,
          callbacks=[hooks, ProgressPrinter(bars=False, file=buf)])
    steps = [("step", s) for s in range(8)]
    assert hooks.calls == [("message", "held"), ("begin", 0, 2, 8, 0), *steps, ("end", 1, 1),
                           ("begin", 1, 2, 8, 0), *steps, ("end", 2, 2)]
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("fewshot train: held out 3 of the base classes")
    assert lines[1].startswith("fewshot train: epoch=1 loss=") and "val_3w1s=" in lines[1]


def test_cli_trains_an_episodic_objective_from_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "proto.toml"
    recipe.write_text('objective = "protonet"\ndistance = "euclidean"\noptimizer = "adam"\nlr = 0.001\n'
                      "warmup_epochs = 0\nepisode_way = 3\nepisode_shot = 1\nepisode_query = 2\n"
                      "episodes_per_step = 2\nsteps_per_epoch = 3\nepochs = 1\n")
    out = tmp_path / "run"
    code = main(["train", "--data", "digits?max_per_class=20", "--image-size", "16", "--recipe", str(recipe),
                 "--val-way", "2", "--val-shots", "1", "--val-episodes", "10", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    model, info = load_encoder(out / "best.pt")
    assert info["config"]["objective"] == "protonet" and info["distance"] == "euclidean"
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["sampler"]["kind"] == "episodes" and "head.log_scale" in ckpt["loss_state"]
    with pytest.raises(SystemExit):
        main(["train", "--data", "glyphs", "--objective", "maml", "--out", str(tmp_path / "bad")])


def test_one_device_picker():
    from fewshot.device import pick_device
    if not torch.cuda.is_available():
        assert pick_device() == pick_device("auto") == torch.device("cpu") or pick_device().type == "mps"
        with pytest.raises(FewShotError, match="device 'cuda' asked for, but no CUDA device is available"):
            pick_device("cuda")
    assert pick_device("cpu") == pick_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(FewShotError, match="unknown device 'gpu0'"):
        pick_device("gpu0")


def test_precision_bf16_autocasts_the_step_on_cpu_and_keeps_fp32_weights(tmp_path, monkeypatch):
    from fewshot.device import autocast_dtype, cpu_has_fast_bf16
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype("fast", torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype("fast", cpu) == (torch.bfloat16 if cpu_has_fast_bf16() else None)
    with pytest.raises(FewShotError, match="precision must be one of auto, fast, fp32, bf16, got 'fp16'"):
        autocast_dtype("fp16", cpu)

    data, val = digits_set().split_classes(0.3, seed=0)
    seen = []

    def spy(module, args, output):
        if isinstance(output, torch.Tensor) and not isinstance(output, torch.fx.Proxy):
            seen.append(output.dtype)

    from fewshot.models.encoders import Encoder
    original = Encoder.__init__

    def hooked(self, *a, **k):
        original(self, *a, **k)
        self.backbone.register_forward_hook(spy)

    monkeypatch.setattr(Encoder, "__init__", hooked)
    bf = train(_cfg(epochs=1, precision="bf16"), data, val, tmp_path / "bf", progress=False)
    seen_bf = set(seen)
    seen.clear()
    fp = train(_cfg(epochs=1), data, val, tmp_path / "fp", progress=False)
    monkeypatch.undo()
    assert torch.bfloat16 in seen_bf and set(seen) == {torch.float32}  # fp32 stays the CPU default
    w_bf, w_fp = _weights(bf.last_path), _weights(fp.last_path)
    assert all(v.dtype == w_fp[k].dtype for k, v in w_bf.items())  # weights stay fp32
    assert all(torch.isfinite(v.float()).all() for v in w_bf.values())
    assert any(not torch.equal(v, w_fp[k]) for k, v in w_bf.items() if v.is_floating_point())
    assert load_checkpoint(bf.last_path)["config"]["precision"] == "bf16"
    again = train(_cfg(epochs=1, precision="bf16"), data, val, tmp_path / "bf2", progress=False)
    w_again = _weights(again.last_path)
    assert all(torch.equal(v, w_again[k]) for k, v in w_bf.items())  # same seed, same weights


def test_bad_precision_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):  # the CLI's choices
        main(["train", "--data", "digits", "--precision", "fp16", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    # recipes and the Python API: the config check, before any data is read
    with pytest.raises(FewShotError, match="precision must be one of auto, fast, fp32, bf16, got 'half'"):
        train(_cfg(precision="half"), digits_set(), None, tmp_path / "y", progress=False)


def test_eval_transform_validates_and_becomes_evaluations_default(tmp_path):
    """``eval_transform``: validation scores the transformed features, the checkpoint records the
    transform, and ``evaluate`` (as ``fewshot eval``) uses it unless told otherwise, reproducing
    the run's own figure on the same episodes."""
    from episodes.protocols import EpisodeProtocol
    from fewshot.evaluation.evaluate import evaluate

    data, val = digits_set(per_class=8).split_classes(0.3, seed=0)
    res = train(_cfg(epochs=1, eval_transform="pt"), data, val, tmp_path / "pt", progress=False)
    plain = train(_cfg(epochs=1), data, val, tmp_path / "l2", progress=False)
    model, info = load_encoder(res.best_path)
    assert info["transform"] == "pt" and load_encoder(plain.best_path)[1]["transform"] is None
    assert info["hash"] == load_encoder(plain.best_path)[1]["hash"]   # same weights; only validation differs
    protocol = EpisodeProtocol(way=3, shots=(1,), query=5, episodes=20, seed=0)
    ev = evaluate(res.best_path, val, heads="proto", episodes=protocol, device="cpu", progress=False,
                  retrieval=False)
    assert ev.config["transform"] == "pt"
    assert float(ev.accuracy[("proto", 1)].mean()) == pytest.approx(res.val_accuracy, abs=1e-6)  # float32 row
    ev_l2 = evaluate(res.best_path, val, heads="proto", episodes=protocol, transform="l2", device="cpu",
                     progress=False, retrieval=False)
    assert float(ev_l2.accuracy[("proto", 1)].mean()) == pytest.approx(plain.val_accuracy, abs=1e-6)
    import fewshot

    clf = fewshot.adapt(res.best_path, (val.images, val.labels), head="proto", progress=False)
    assert clf.transform == "pt"                                        # adapt follows the record too
    assert fewshot.adapt(res.best_path, (val.images, val.labels), head="proto", transform="l2",
                         progress=False).transform == "l2"
    from fewshot.models.checkpoint import load_checkpoint

    forged = {**load_checkpoint(res.best_path), "transform": "zca"}
    with pytest.raises(FewShotError, match="unknown feature transform 'zca'"):
        load_encoder(forged)
    # features that can be negative (a linear projection): refused before the first epoch
    with pytest.raises(FewShotError, match="eval-transform pt does not fit encoder conv4: transform pt needs "
                                           "non-negative features"):
        train(_cfg(epochs=1, eval_transform="pt", embedding_dim=8), data, val, tmp_path / "neg",
              progress=False)
    assert not (tmp_path / "neg" / "last.pt").exists()
    with pytest.raises(FewShotError, match="eval-transform cl2n needs the base-class mean"):
        train(_cfg(epochs=1, eval_transform="cl2n"), data, val, tmp_path / "c", progress=False)
    with pytest.raises(FewShotError, match="unknown feature transform 'zca'; choose one of none, l2, cl2n"):
        train(_cfg(epochs=1, eval_transform="zca"), data, val, tmp_path / "z", progress=False)
