"""Ink framing (``Preprocess(frame=...)``, ``fewshot train --frame``): every drawing cropped to the
square around its ink before the resize, recorded in the checkpoint and applied the same way by
training, validation and evaluation (the ``omniglot`` recipe end to end, with its framing: test_train.py)."""

import pytest
import torch
from _train_data import one_thread  # noqa: F401 (an autouse fixture)
from adapt_fixtures import checkpoint, folders  # noqa: F401 - fixtures

from fewshot.cli import main
from fewshot.errors import FewShotError
from fewshot.models.preprocess import Preprocess, frame_ink


def _ink_box(img: torch.Tensor, threshold: float = 0.5):
    ys, xs = torch.nonzero(img[0] > threshold, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _page(top: int, left: int, height: int, width: int, side: int = 96) -> torch.Tensor:
    """A blank page with one ink rectangle (1 channel, float in [0, 1], ink high)."""
    x = torch.zeros(1, 1, side, side)
    x[..., top:top + height, left:left + width] = 1.0
    return x


def test_frame_centres_the_ink_and_fills_the_asked_share_of_the_side():
    out = frame_ink(_page(5, 50, 40, 20), fill=0.5, size=(32, 32))        # a 40 x 20 box, off centre
    top, bottom, left, right = _ink_box(out[0])
    assert bottom - top == 16 and right - left == 8                        # longer side: 0.5 of 32
    assert (top + bottom) / 2 == 16 and (left + right) / 2 == 16           # centred both ways
    assert out.shape == (1, 1, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_frame_removes_the_place_and_size_of_a_drawing():
    """The same shape drawn small in a corner and large in the middle frames to the same picture."""
    small = _page(4, 6, 20, 10)
    large = _page(30, 35, 40, 20)
    a, b = frame_ink(torch.cat([small, large]), fill=0.8, size=(28, 28))
    assert torch.allclose(a, b, atol=0.05)
    plain = torch.nn.functional.interpolate(torch.cat([small, large]), size=(28, 28), mode="bilinear",
                                            antialias=True)
    assert (plain[0] - plain[1]).abs().max() > 0.9                          # unframed they differ


def test_image_without_ink_is_resized_whole_and_each_image_is_framed_on_its_own():
    faint = _page(0, 0, 48, 48) * 0.3                                      # below the ink threshold
    out = frame_ink(faint, 0.8, (24, 24))[0, 0]
    assert torch.allclose(out[:12, :12], torch.tensor(0.3)) and out[12:, :].abs().max() == 0
    one = _page(10, 10, 30, 30)
    both = frame_ink(torch.cat([faint, one]), 0.8, (28, 28))
    assert torch.equal(both[1:], frame_ink(one, 0.8, (28, 28)))


def test_preprocess_records_frame_and_old_records_load_unframed():
    pre = Preprocess(28, 1, 0.2, 0.3, frame=0.8)
    d = pre.to_dict()
    assert d["frame"] == 0.8 and Preprocess.from_dict(d) == pre and "frame=0.8" in repr(pre)
    plain = Preprocess(28, 1, 0.2, 0.3)
    assert "frame" not in plain.to_dict()                                  # unframed records unchanged
    assert Preprocess.from_dict(plain.to_dict()).frame is None and plain != pre
    for bad in (0, 1.5, -0.2):
        with pytest.raises(FewShotError, match="frame must be in"):
            Preprocess(28, 1, frame=bad)


def test_prepare_then_prepared_equals_framing_on_the_fly():
    """The training set is framed once (``prepare``, uint8); its steps use ``prepared`` (no second
    framing): the same pixels as framing the full-size drawing as evaluation does, to the uint8 step."""
    pages = torch.cat([_page(5, 50, 40, 20), _page(30, 10, 25, 60), _page(0, 0, 96, 8)])
    pages = (pages * 255).to(torch.uint8)
    pre = Preprocess(28, 1, frame=0.8)
    stored = pre.prepare(pages)
    assert stored.dtype == torch.uint8 and stored.shape == (3, 1, 28, 28)
    assert (pre.prepared().to_unit(stored) - pre.to_unit(pages)).abs().max() <= 0.5 / 255 + 1e-6
    assert pre.prepared().frame is None and pre.prepared().mean == pre.mean
    unframed = Preprocess(28, 1)
    assert torch.equal(unframed.prepare(pages), (unframed.to_unit(pages) * 255).round().to(torch.uint8))


def test_bad_frame_flag_is_one_line(tmp_path, capsys):
    code = main(["train", "--data", "glyphs", "--frame", "1.5", "--out", str(tmp_path / "r")])
    assert code == 2 and "frame must be in (0, 1]" in capsys.readouterr().err


def test_frame_needs_an_image_size_and_a_framing_run_records_it(tmp_path):
    from _train_data import digits_set, tiny_config

    from fewshot.models.checkpoint import load_encoder
    from fewshot.training.trainer import train

    with pytest.raises(FewShotError, match="frame needs image-size"):
        train(tiny_config(frame=0.8), digits_set(), None, tmp_path / "no-size", progress=False)
    res = train(tiny_config(epochs=1, frame=0.8, image_size=16), digits_set(), None, tmp_path / "run",
                progress=False)
    assert load_encoder(res.best_path)[1]["preprocess"].frame == 0.8 and 0 <= res.val_accuracy <= 1


def test_int8_classifier_of_a_framing_encoder_keeps_its_calibration_through_save_load(
        checkpoint, folders, tmp_path):  # noqa: F811
    """The file stores the calibration images framed; loading must not frame them a second time."""
    from fewshot.adaptation.adapt import adapt
    from fewshot.adaptation.classifier import load_classifier
    from fewshot.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    framed = save_checkpoint(tmp_path / "framed.pt",
                             {**ckpt, "preprocess": {**ckpt["preprocess"], "frame": 0.8}})
    support, query = folders
    paths = sorted(str(p) for p in query.rglob("*.png"))
    clf = adapt(framed, support, head="proto", int8=True)
    assert clf.preprocess.frame == 0.8 and clf.int8_calibration.shape[-2:] == (28, 28)
    again = load_classifier(clf.save(tmp_path / "q.fewshot"))
    assert torch.equal(again.int8_calibration, clf.int8_calibration)
    assert again.predict(paths).labels == clf.predict(paths).labels
