import os

import pytest
import torch

import fewshot.models.checkpoint as ck
from fewshot.errors import FewShotError
from fewshot.models.checkpoint import load_checkpoint, load_encoder, save_checkpoint, state_hash
from fewshot.models.encoders import build_encoder
from fewshot.models.preprocess import Preprocess


def _ckpt(seed=0):
    torch.manual_seed(seed)
    model = build_encoder("conv4", in_channels=1, num_classes=3, image_size=28, width=8)
    return model, {"model": model.state_dict(), "encoder": model.spec,
                   "preprocess": Preprocess(28, 1, 0.1, 0.3).to_dict(), "distance": "euclidean",
                   "base_classes": ["a", "b", "c"], "base_mean": torch.zeros(model.embedding_dim),
                   "config": {"lr": 0.1}}


def test_roundtrip_and_load_encoder(tmp_path):
    model, obj = _ckpt()
    path = save_checkpoint(tmp_path / "x.pt", obj)
    rebuilt, info = load_encoder(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt(x)[0], model.eval()(x)[0])
    assert info["hash"] == state_hash(model.state_dict()) and info["distance"] == "euclidean"
    assert info["base_classes"] == ["a", "b", "c"] and info["preprocess"] == Preprocess(28, 1, 0.1, 0.3)
    assert load_encoder(load_checkpoint(path))[1]["hash"] == info["hash"]


def test_failed_write_leaves_old_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _, old = _ckpt(0)
    save_checkpoint(path, old)
    before = path.read_bytes()

    def dying_save(obj, fh, *a, **kw):
        fh.write(b"half a checkpoint")
        raise OSError("disk full (simulated kill mid-write)")

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, _ckpt(1)[1])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["config"] == {"lr": 0.1}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_missing_corrupt_foreign_and_pickled_code_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FewShotError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(FewShotError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(FewShotError, match="not a fewshot checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": ck.FORMAT, "model": {}, "encoder": {}, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FewShotError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "EVIL_RAN").exists()
    _, obj = _ckpt()
    obj["model"] = {k: v for k, v in obj["model"].items() if "classifier" not in k}
    save_checkpoint(tmp_path / "partial.pt", obj)
    with pytest.raises(FewShotError, match="weights do not fit encoder conv4"):
        load_encoder(tmp_path / "partial.pt")
