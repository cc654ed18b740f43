"""Test-time augmentation (one embedding path, batched views, seeded, the checkpoint's setting by
default, recorded in results and model files) and the retrieval figures of ``fewshot eval``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from adapt_fixtures import checkpoint, folders  # noqa: F401 - fixtures

from episodes.imageset import ImageSet
from episodes.protocols import EpisodeProtocol
from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import evaluate
from fewshot.evaluation.features import embed, transform
from fewshot.evaluation.report import write_report
from fewshot.evaluation.retrieval import retrieval_figures
from fewshot.evaluation.tta import PHOTO_AUGMENT, TTA, checkpoint_tta, dihedral, resolve_tta
from fewshot.models.checkpoint import save_checkpoint
from fewshot.models.encoders import build_encoder, encoder_spec
from fewshot.models.preprocess import Preprocess


def _model():
    torch.manual_seed(0)
    return build_encoder("conv4", in_channels=1, num_classes=4, image_size=16, width=8).eval()


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    """scikit-learn's 8x8 digits (1 channel, 16x16 after the checkpoint's preprocessing)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.arange(len(d.target)) < 400
    images = torch.from_numpy((d.images[keep] * 255 / 16).round().astype(np.uint8)).unsqueeze(1)
    return ImageSet(images, torch.from_numpy(d.target[keep]), [str(i) for i in range(10)],
                    [f"digit{i}" for i in range(int(keep.sum()))], name="digits")


def _checkpoint(path, **extra):
    model = _model()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"encoder": encoder_spec(model), "model": state, "hash": "tta" + path.stem,
                           "preprocess": Preprocess(16, 1).to_dict(), "distance": "cosine", **extra})
    return path


# ------------------------------------------------------------------ the embedding path
def test_one_view_is_exactly_the_plain_embedding(digits):
    model, pre = _model(), Preprocess(16, 1)
    plain = embed(model, digits, pre, device="cpu", progress=False)
    assert torch.equal(embed(model, digits, pre, device="cpu", progress=False, tta=TTA(1)), plain)
    # identity views: the batched views x images bookkeeping averages the right rows
    same = embed(model, digits, pre, device="cpu", progress=False,
                 tta=TTA(3, {"mode": "none"}, normalize=False))
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=1e-5)


def test_views_are_seeded_and_each_image_is_embedded_on_its_own(digits):
    model, pre, x = _model(), Preprocess(16, 1), digits.images[:23]
    tta = TTA(5, seed=1)
    a = embed(model, x, pre, device="cpu", progress=False, tta=tta, batch_size=5)   # one image per pass
    same = embed(model, x, pre, device="cpu", progress=False, tta=TTA(5, seed=1), batch_size=5)
    assert torch.equal(a, same)
    many = embed(model, x, pre, device="cpu", progress=False, tta=tta, batch_size=5 * 23)
    torch.testing.assert_close(many, a, atol=1e-6, rtol=1e-5)  # batch composition does not matter
    alone = torch.cat([embed(model, x[i:i + 1], pre, device="cpu", progress=False, tta=tta)
                       for i in range(3)])
    torch.testing.assert_close(alone, a[:3], atol=1e-6, rtol=1e-5)
    other = embed(model, x, pre, device="cpu", progress=False, tta=TTA(5, seed=2), batch_size=5)
    assert not torch.allclose(other, a)


def test_tta_settings_are_checked_in_one_line():
    with pytest.raises(FewShotError, match="positive integer"):
        TTA(0)
    with pytest.raises(FewShotError, match="unknown augmentation options"):
        TTA(4, {"mode": "affine", "bogus": 1})
    with pytest.raises(FewShotError, match="geometric"):
        TTA(4, {"mode": "crop", "brightness": 0.4})
    record = TTA(7, dict(PHOTO_AUGMENT), 3).to_dict()
    assert TTA.from_dict(record).to_dict() == record


def test_checkpoint_default_record_config_and_overrides():
    pre = Preprocess(16, 1)
    assert resolve_tta({"preprocess": pre}).plain  # no recipe setting: plain
    old = {"preprocess": pre, "distance": "cosine",
           "config": {"val_tta": 8, "val_tta_augment": {"degrees": 5.0}, "seed": 4}}
    got = checkpoint_tta(old)  # a checkpoint written before the record: from its config
    assert (got.views, got.augment["degrees"], got.augment["mode"], got.seed) == (8, 5.0, "affine", 4)
    photo = resolve_tta({"preprocess": Preprocess(16, 3), "config": {"val_tta": 4}})
    assert photo.augment["mode"] == "crop" and photo.augment["flip"]  # photos: crops and flips
    new = resolve_tta(old, 16, {"shear": 3.0, "seed": 9})
    assert (new.views, new.augment["degrees"], new.augment["shear"], new.seed) == (16, 5.0, 3.0, 9)
    assert resolve_tta(old, None, {"mode": "crop"}).augment["scale"] == PHOTO_AUGMENT["scale"]


# ------------------------------------------------------------------ symmetries
def test_symmetries_concatenate_each_symmetry_embedded_with_the_same_views(digits):
    model, pre, x = _model(), Preprocess(16, 1), digits.images[:12]
    one = embed(model, x, pre, device="cpu", progress=False, tta=TTA(1, symmetries=8))
    d = one.shape[1] // 8
    assert one.shape == (12, 8 * d)
    for g in range(8):  # 1 view: block g is the plain embedding of the turned / mirrored image
        turned = embed(model, dihedral(x, g).contiguous(), pre, device="cpu", progress=False)
        torch.testing.assert_close(one[:, g * d:(g + 1) * d], turned, atol=1e-5, rtol=1e-4)
    tta = TTA(3, seed=4, symmetries=4)
    many = embed(model, x, pre, device="cpu", progress=False, tta=tta, batch_size=7)
    for j, g in enumerate((0, 1, 2, 3)):  # the same 3 seeded views of every symmetry
        views = embed(model, dihedral(x, g).contiguous(), pre, device="cpu", progress=False,
                      tta=TTA(3, seed=4))
        torch.testing.assert_close(many[:, j * d:(j + 1) * d], views, atol=1e-5, rtol=1e-4)
    assert torch.equal(dihedral(dihedral(x, 1), 3), x) and torch.equal(dihedral(dihedral(x, 4), 4), x)


def test_block_transform_gives_the_mean_of_the_blocks_cosines():
    a, b = torch.rand(5, 3 * 7), torch.rand(5, 3 * 7)
    for kind in ("l2", "pt"):
        fa, fb = transform(a, kind, blocks=3), transform(b, kind, blocks=3)
        torch.testing.assert_close(fa.norm(dim=1), torch.ones(5))
        blocks = [(transform(a[:, k * 7:(k + 1) * 7], kind) * transform(b[:, k * 7:(k + 1) * 7], kind)).sum(1)
                  for k in range(3)]
        torch.testing.assert_close((fa * fb).sum(1), torch.stack(blocks).mean(0))
    assert torch.equal(transform(a, "none", blocks=3), a)
    with pytest.raises(FewShotError, match="do not split into 4 blocks"):
        transform(a, "l2", blocks=4)


def test_symmetry_settings_records_and_checks():
    assert "symmetries" not in TTA(4).to_dict()   # one symmetry: the record as before
    record = TTA(4, symmetries=8).to_dict()
    assert record["symmetries"] == 8 and TTA.from_dict(record).to_dict() == record
    assert TTA(1, symmetries=2).passes == 2 and not TTA(1, symmetries=2).plain
    assert "32 views" in TTA(32).describe() and TTA(32, symmetries=8).describe().endswith("x 8 symmetries")
    for bad in (3, 0, True, "8"):
        with pytest.raises(FewShotError, match="symmetries must be 1, 2, 4 or 8"):
            TTA(2, symmetries=bad)
    with pytest.raises(FewShotError, match="needs square images; these are 16x20"):
        TTA(1, symmetries=4).expand(torch.rand(2, 1, 16, 20))
    assert TTA(1, symmetries=2).expand(torch.rand(2, 1, 16, 20)).shape == (4, 1, 16, 20)  # mirror: any shape
    cfg = {"val_tta": 8, "val_tta_symmetries": 8, "seed": 0}
    assert checkpoint_tta({"preprocess": Preprocess(16, 1), "config": cfg}).symmetries == 8
    off = resolve_tta({"preprocess": Preprocess(16, 1), "config": cfg}, None, {"symmetries": 1})
    assert off.symmetries == 1
    from fewshot.training.config import TrainConfig, check_config

    with pytest.raises(FewShotError, match="val-tta-symmetries must be 1, 2, 4 or 8, got 3"):
        check_config(TrainConfig(data="x", val_tta_symmetries=3))


def test_eval_with_symmetries_records_them_and_scores_the_mean_similarity(tmp_path, digits):
    ckpt = _checkpoint(tmp_path / "s.pt", tta=TTA(2, seed=1, symmetries=4).to_dict())
    kw = dict(heads="proto,nn,ls", episodes=EpisodeProtocol(5, (1, 5), episodes=30), progress=False,
              device="cpu")
    res = evaluate(ckpt, digits, cache_dir=tmp_path / "c", **kw)
    assert res.config["tta"]["symmetries"] == 4 and "x 4 symmetries" in res.table()
    plain = evaluate(ckpt, digits, cache_dir=tmp_path / "c", tta_args={"symmetries": 1}, **kw)
    assert "symmetries" not in plain.config["tta"]
    assert not np.array_equal(plain.accuracy[("proto", 1)], res.accuracy[("proto", 1)])
    assert all(0 < acc.mean() <= 1 for acc in res.accuracy.values())
    with pytest.raises(FewShotError, match="proto-dc calibrates toward base-class means of single"):
        evaluate(ckpt, digits, cache_dir=tmp_path / "c", **{**kw, "heads": "proto,proto-dc"})


# ------------------------------------------------------------------ eval / CLI
def test_eval_uses_the_checkpoint_setting_and_records_it(tmp_path, digits):
    record = TTA(4, seed=2).to_dict()
    ckpt = _checkpoint(tmp_path / "rec.pt", tta=record)
    kw = dict(heads="proto", episodes=EpisodeProtocol(5, (1,), episodes=40), progress=False, device="cpu")
    res = evaluate(ckpt, digits, cache_dir=tmp_path / "c1", **kw)
    write_report(res, tmp_path / "a")
    assert res.config["tta"] == record
    again = evaluate(ckpt, digits, cache_dir=tmp_path / "c2", tta_views=4, **kw)  # no cache shared
    np.testing.assert_array_equal(res.accuracy[("proto", 1)], again.accuracy[("proto", 1)])
    plain = evaluate(ckpt, digits, cache_dir=tmp_path / "c1", tta_views=1, **kw)
    assert plain.config["tta"]["views"] == 1
    assert not np.array_equal(plain.accuracy[("proto", 1)], res.accuracy[("proto", 1)])
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["config"]["tta"]["views"] == 4 and doc["retrieval"]["distance"] == "cosine"
    md = (tmp_path / "a" / "results.md").read_text()
    assert "4 views (affine" in md and "## Retrieval" in md and "TTA 4 views" in res.table()


def test_cli_flags_override_and_bad_options_fail_in_one_line(tmp_path, digits, capsys, monkeypatch):
    import episodes

    monkeypatch.setattr(episodes, "load_data", lambda spec, split=None, **k: digits)
    ckpt = _checkpoint(tmp_path / "c.pt", config={"val_tta": 3, "seed": 0})
    base = ["eval", "--checkpoint", str(ckpt), "--data", "digits", "--heads", "proto", "--shot", "1",
            "--episodes", "20", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "results.json").read_text())["config"]["tta"]["views"] == 3
    assert main(base + ["--tta", "2", "--tta-arg", "degrees=5", "--tta-arg", "scale=0.9,1.1",
                        "--out", str(tmp_path / "o")]) == 0
    tta = json.loads((tmp_path / "o" / "results.json").read_text())["config"]["tta"]
    assert tta["views"] == 2 and tta["augment"]["degrees"] == 5 and tta["augment"]["scale"] == [0.9, 1.1]
    out = capsys.readouterr().out
    assert "retrieval (400 images, 10 classes, leave-one-out, cosine): P@1" in out
    assert main(base + ["--tta-arg", "bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0]
    with pytest.raises(SystemExit):
        main(base + ["--tta", "0"])


def test_adapted_model_file_records_and_reuses_the_tta(checkpoint, folders, tmp_path):  # noqa: F811
    from fewshot.adaptation.adapt import adapt
    from fewshot.adaptation.classifier import load_classifier

    clf = adapt(checkpoint, folders[0], head="proto", tta_views=3, tta_args={"seed": 5})
    assert clf.tta.views == 3 and "TTA 3 views" in clf.report.table()
    path = clf.save(tmp_path / "m.pt")
    back = load_classifier(path)
    assert back.tta.to_dict() == clf.tta.to_dict()
    a = clf.predict(sorted(str(p) for p in folders[1].rglob("*.png")))
    b = back.predict(sorted(str(p) for p in folders[1].rglob("*.png")))
    assert a.labels == b.labels and torch.allclose(a.probs, b.probs, atol=1e-6)
    plain = adapt(checkpoint, folders[0], head="proto")
    assert plain.tta.plain and not torch.allclose(plain.head.sums, clf.head.sums)


def test_adapted_model_with_symmetries_saves_loads_and_predicts_alike(checkpoint, folders, tmp_path,  # noqa: F811
                                                                      capsys):
    from fewshot.adaptation.adapt import adapt
    from fewshot.adaptation.classifier import load_classifier, read_images

    clf = adapt(checkpoint, folders[0], head="ls", tta_args={"symmetries": 8})
    files = sorted(str(p) for p in folders[1].rglob("*.png"))
    back = load_classifier(clf.save(tmp_path / "m.pt"))
    assert back.tta.symmetries == 8 and back.blocks == 8
    a, b = clf.predict(files), back.predict(files)
    assert a.labels == b.labels and torch.allclose(a.probs, b.probs, atol=1e-6)
    images = read_images(files[:4], clf.preprocess)[0]
    with torch.no_grad():   # the module path (one view per symmetry) is the embedding path
        torch.testing.assert_close(clf.features(images), clf.embed(images), atol=1e-4, rtol=1e-3)
    assert clf(images).shape == (4, clf.num_classes)    # differentiable forward: the same feature size
    assert main(["predict", "--model", str(tmp_path / "m.pt"), *files[:2], "--tta", "2"]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "m.pt"), *files[:2], "--tta-arg", "symmetries=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapted with 8 TTA symmetries" in err[0]


# ------------------------------------------------------------------ retrieval
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_retrieval_figures_match_a_hand_checked_case(distance):
    """Class A at 0, 1, 10 and class B at 2.5, 11, 12.5 on a line (R = 2 for every query).
    Neighbours, nearest first, and the figures by hand (P@1, R-precision, AP@R):
    a0: a1 b0 -> 1, 1/2, 1/2       a1: a0 b0 -> 1, 1/2, 1/2      a2: b1 b2 -> 0, 0, 0
    b0: a1 a0 -> 0, 0, 0           b1: a2 b2 -> 0, 1/2, 1/4      b2: b1 a2 -> 1, 1/2, 1/2
    Means: P@1 3/6, R-precision 2/6, MAP@R 1.75/6. Under cosine the same points become angles of
    5 degrees per unit on the unit circle: the same order, the same figures."""
    x = torch.tensor([0.0, 1.0, 10.0, 2.5, 11.0, 12.5])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    feats = x.unsqueeze(1) if distance == "euclidean" else torch.stack(
        [torch.cos(x * math.pi / 36), torch.sin(x * math.pi / 36)], 1)
    r = retrieval_figures(feats, y, distance)
    assert r["precision_at_1"] == pytest.approx(3 / 6)
    assert r["r_precision"] == pytest.approx(2 / 6)
    assert r["map_at_r"] == pytest.approx(1.75 / 6)
    assert (r["images"], r["classes"], r["distance"]) == (6, 2, distance)
    with pytest.raises(FewShotError, match="two images"):
        retrieval_figures(feats[:4], y[:4], distance)
