"""FewShotClassifier: forward, save/load round trip, weights_only files, refusal of bad files."""

from __future__ import annotations

import importlib
import shutil

import pytest
import torch
from adapt_fixtures import checkpoint, folders  # noqa: F401 - fixtures

from fewshot.adaptation.classifier import FORMAT, VERSION, FewShotClassifier, load_classifier, payload_digest
from fewshot.errors import FewShotError

A = importlib.import_module("fewshot.adaptation.adapt")  # the module (fewshot.adapt is the function)


@pytest.mark.parametrize("head", ["ls", "proto", "nn"])
def test_save_load_round_trip_gives_identical_logits(checkpoint, folders, tmp_path, head):  # noqa: F811
    support, query = folders
    clf = A.adapt(checkpoint, support, head=head)
    assert isinstance(clf, FewShotClassifier) and clf.head_kind == head
    paths = sorted(str(p) for p in query.rglob("*.png"))
    path = clf.save(tmp_path / "m.fewshot")
    again = load_classifier(path)
    assert again.class_names == clf.class_names and again.temperature == clf.temperature
    p1, p2 = clf.predict(paths), again.predict(paths)
    assert torch.equal(p1.probs, p2.probs) and p1.labels == p2.labels
    from episodes.decode import decode_image
    x = torch.stack([decode_image(p, channels=1, size=105) for p in paths[:4]])
    with torch.no_grad():
        assert torch.equal(clf(x), again(x))
        logits = again(x)
    assert logits.shape == (4, clf.num_classes)
    # uint8 and float in [0, 1] are the same picture
    with torch.no_grad():
        torch.testing.assert_close(again(x.float() / 255), logits, rtol=1e-4, atol=1e-4)


def test_file_is_weights_only_plain_data(checkpoint, folders, tmp_path):  # noqa: F811
    clf = A.adapt(checkpoint, folders[0], head="ls")
    path = clf.save(tmp_path / "m.fewshot")
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == FORMAT and doc["version"] == VERSION
    assert doc["sha256"] == payload_digest(doc["payload"])
    head = doc["payload"]["head"]
    d, k = head["weight"].shape
    if d > 30:   # fewer rows than features: the rows themselves, not the D x D statistics
        assert head["rows"].shape == (30, d) and head["labels"].shape == (30,) and "xtx" not in head
    else:
        assert head["xtx"].shape == (d, d) and head["xty"].shape == (d, k)
    assert head["counts"].sum() == 30
    assert doc["payload"]["class_names"] == clf.class_names
    assert "model" in doc["payload"]["encoder"]["checkpoint"]
    assert "optimizer" not in doc["payload"]["encoder"]["checkpoint"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))


def test_ls_rows_in_a_model_file_are_checked_against_each_other(checkpoint, folders, tmp_path):  # noqa: F811
    clf = A.adapt(checkpoint, folders[0], head="ls", tta_args={"symmetries": 4})   # 4 x D features, 30 rows
    path = clf.save(tmp_path / "m.fewshot")
    head = torch.load(path, weights_only=True)["payload"]["head"]
    assert "rows" in head and "xtx" not in head
    assert load_classifier(path).head.stats.rows.shape == (1, *head["rows"].shape)

    def forged(edit, name):
        doc = torch.load(path, weights_only=True)
        edit(doc["payload"]["head"])
        doc["sha256"] = payload_digest(doc["payload"])
        torch.save(doc, tmp_path / name)
        return tmp_path / name

    cases = {"counts": lambda h: h.__setitem__("counts", h["counts"].flip(0) + 1),
             "labels": lambda h: h.__setitem__("labels", h["labels"] + 100),
             "rows": lambda h: h.__setitem__("rows", h["rows"][:, :5])}
    for field, edit in cases.items():
        with pytest.raises(FewShotError, match=f"model file field 'head.{field}'") as err:
            load_classifier(forged(edit, f"{field}.fewshot"))
        assert "\n" not in str(err.value)


def test_reference_mode_stores_hash_and_verifies_it(checkpoint, folders, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ck.pt"
    shutil.copy(checkpoint, ckpt)
    clf = A.adapt(ckpt, folders[0], head="proto", reference=True)
    path = clf.save(tmp_path / "ref.fewshot")
    doc = torch.load(path, weights_only=True)
    assert "checkpoint" not in doc["payload"]["encoder"]
    assert doc["payload"]["encoder"]["reference"]["path"] == str(ckpt.resolve())
    assert path.stat().st_size < ckpt.stat().st_size
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(load_classifier(path)(x), clf(x))
    # another checkpoint in its place: refused, naming the model file
    from fewshot.models.checkpoint import load_checkpoint, save_checkpoint
    other = load_checkpoint(ckpt)
    other["model"] = {k: (v + 1 if v.is_floating_point() else v) for k, v in other["model"].items()}
    other["hash"] = "ffffffffffffffff"
    other.pop("format")
    save_checkpoint(ckpt, other)
    with pytest.raises(FewShotError, match="changed since") as exc:
        load_classifier(path)
    assert str(path) in str(exc.value)


def _resave(path, mutate):
    doc = torch.load(path, weights_only=True)
    mutate(doc)
    torch.save(doc, path)


def test_refuses_other_version_tampered_and_foreign_files(checkpoint, folders, tmp_path):  # noqa: F811
    clf = A.adapt(checkpoint, folders[0], head="proto")
    good = clf.save(tmp_path / "good.fewshot")

    bad = tmp_path / "v2.fewshot"
    shutil.copy(good, bad)
    _resave(bad, lambda d: d.update(version=VERSION + 1))
    with pytest.raises(FewShotError, match="version 2 is not supported") as exc:
        load_classifier(bad)
    assert str(bad) in str(exc.value)

    bad = tmp_path / "tampered.fewshot"
    shutil.copy(good, bad)
    _resave(bad, lambda d: d["payload"]["head"]["sums"].mul_(2))
    with pytest.raises(FewShotError, match="hash mismatch"):
        load_classifier(bad)
    shutil.copy(good, bad)
    _resave(bad, lambda d: d["payload"]["class_names"].reverse())
    with pytest.raises(FewShotError, match="modified"):
        load_classifier(bad)

    junk = tmp_path / "junk.fewshot"
    junk.write_bytes(b"not a model")
    with pytest.raises(FewShotError, match="not a readable"):
        load_classifier(junk)
    with pytest.raises(FewShotError, match="not a fewshot classifier"):
        load_classifier(checkpoint)
    with pytest.raises(FewShotError, match="no such model file"):
        load_classifier(tmp_path / "missing.fewshot")


def test_wrong_channel_count_says_what_was_expected(checkpoint, folders):  # noqa: F811
    clf = A.adapt(checkpoint, folders[0], head="ls")
    with pytest.raises(FewShotError, match="1 or 3 channels .*takes 1.*got 4"):
        clf(torch.zeros(2, 4, 28, 28, dtype=torch.uint8))
    rgb = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    assert clf(rgb).shape == (2, 6)          # colour and other sizes are converted


def test_predict_top_k_and_reject(checkpoint, folders):  # noqa: F811
    support, query = folders
    clf = A.adapt(checkpoint, support, head="ls")
    paths = sorted(str(p) for p in query.rglob("*.png"))
    pred = clf.predict(paths, top_k=3)
    assert len(pred) == len(paths) and all(len(t) == 3 for t in pred.top_k)
    torch.testing.assert_close(pred.probs.sum(1), torch.ones(len(paths)))
    assert [t[0][0] for t in pred.top_k] == pred.labels
    cut = float(pred.probabilities.median())
    rej = clf.predict(paths, reject=cut)
    low = pred.probabilities < cut
    assert [lab == "unknown" for lab in rej.labels] == low.tolist()
    assert bool(low.any()) and not all(low.tolist())


@pytest.mark.parametrize("head,added", [("proto", ["scale"]), ("nn", ["k", "weighted"]), ("ls", [])])
def test_head_record_is_the_fitted_heads_state_and_first_layout_files_still_load(
        checkpoint, folders, tmp_path, head, added):  # noqa: F811
    """The model file's head table is the fitted head's state dict (one task, episode dimension
    dropped); files written before the settings in ``added`` were recorded load with the defaults
    and predict the same."""
    from fewshot.adaptation.classifier import FITTED

    clf = A.adapt(checkpoint, folders[0], head=head)
    assert isinstance(clf.head, FITTED[head]) and clf.head_kind == head
    path = clf.save(tmp_path / "new.fewshot")
    doc = torch.load(path, weights_only=True)
    record = doc["payload"]["head"]
    assert set(record) == {"kind", *clf.head.state_dict()}
    for key in added:
        del record[key]
    doc["sha256"] = payload_digest(doc["payload"])
    old = tmp_path / "old.fewshot"
    torch.save(doc, old)
    paths = sorted(str(p) for p in folders[1].rglob("*.png"))
    assert torch.equal(load_classifier(old).predict(paths).probs, clf.predict(paths).probs)


def test_unfitted_classifier_embeds_but_refuses_to_classify(checkpoint, folders):  # noqa: F811
    clf = A.adapt(checkpoint, folders[0], head="proto")
    bare = FewShotClassifier(clf.encoder, clf.preprocess, None, clf.class_names)
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert bare.embed(x).shape == clf.embed(x).shape
    with pytest.raises(FewShotError, match="no fitted head"):
        bare(x)
