"""adapt / update / the adapt and predict commands, on real Omniglot drawings and a real checkpoint."""

from __future__ import annotations

import csv
import importlib
import io
import json
import shutil

import pytest
import torch
from adapt_fixtures import CLASSES, QUERY, SUPPORT, checkpoint, folders  # noqa: F401 - fixtures

from fewshot.adaptation.classifier import load_classifier
from fewshot.adaptation.loo import class_counts, loo_logits
from fewshot.cli import main
from fewshot.heads import get_head
from fewshot.heads.ridge import DEFAULT_GRID, loo_select, ridge_fit
from fewshot.heads.ridge_stats import RidgeStats

A = importlib.import_module("fewshot.adaptation.adapt")  # the module (fewshot.adapt is the function)


@pytest.fixture(scope="module")
def embedded(checkpoint, folders):  # noqa: F811
    """The support features as the classifier sees them, with labels."""
    clf = A.adapt(checkpoint, folders[0], head="proto")
    imgs, y, names, _ = A._support_tensors(folders[0], clf.preprocess)
    return clf.embed(imgs), y, names


def _fit(head, z, y, k, **options):
    """A one-task head fitted as adapt fits it (``partial_fit`` from nothing)."""
    return get_head(head, **options).partial_fit(None, z[None], y[None], k)


@pytest.mark.parametrize("head", ["proto", "nn", "ls"])
def test_loo_estimate_equals_brute_force(embedded, head):
    z, y, names = embedded
    k = len(names)
    fitted = _fit(head, z, y, k)
    fast = loo_logits(fitted, z, y)
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        if head == "ls":
            lam = float(fitted.lam[0])
            w, b = ridge_fit(z[keep].double(), torch.nn.functional.one_hot(y[keep], k).double(), lam)
            slow = z[i].double() @ w + b
            torch.testing.assert_close(fast[i].double(), slow, rtol=1e-4, atol=1e-4)
        else:
            refit = _fit(head, z[keep], y[keep], k)
            torch.testing.assert_close(fast[i], refit(z[None, i:i + 1])[0, 0].float(), rtol=1e-5, atol=1e-4)


def test_ls_lambda_is_evals_loo_choice_and_fit_matches_ridge_fit(embedded):
    z, y, names = embedded
    fitted = _fit("ls", z, y, len(names))
    onehot = torch.nn.functional.one_hot(y, len(names)).double()
    lam = float(fitted.lam[0])
    assert lam == pytest.approx(float(loo_select(z.double()[None], onehot[None], DEFAULT_GRID).lam[0]))
    w, b = ridge_fit(z.double(), onehot, lam)
    torch.testing.assert_close(fitted.weight[0], w.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fitted.bias[0], b.float(), rtol=1e-4, atol=1e-5)


def test_gcv_from_statistics_equals_gcv_from_rows(embedded):
    z, y, names = embedded
    k = len(names)
    stats = RidgeStats.from_rows(z[None], y[None], k)
    grid = [0.01, 0.1, 1.0, 10.0]
    gcv = stats.gcv(grid)[1][0]
    n = len(y)
    xc = z.double() - z.double().mean(0)
    onehot = torch.nn.functional.one_hot(y, k).double()
    for lam, g in zip(grid, gcv):
        reg = xc.T @ xc + lam * torch.eye(xc.shape[1], dtype=xc.dtype)
        hat = xc @ torch.linalg.solve(reg, xc.T) + 1.0 / n
        rss = (onehot - hat @ onehot).pow(2).sum()
        assert float(g) == pytest.approx(float(n * rss / (n - hat.trace()) ** 2), rel=1e-5)


def _split(folder, tmp_path):
    """First 3 shots of every class, then the rest plus one class held back."""
    a, b = tmp_path / "a", tmp_path / "b"
    classes = sorted(p for p in folder.iterdir())
    for i, c in enumerate(classes):
        for j, f in enumerate(sorted(c.iterdir())):
            dest = (a if j < 3 and i < len(classes) - 1 else b) / c.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    return a, b


@pytest.mark.parametrize("head", ["proto", "ls", "nn"])
def test_update_equals_adapting_on_the_union(checkpoint, folders, tmp_path, head):  # noqa: F811
    a, b = _split(folders[0], tmp_path)
    first = A.adapt(checkpoint, a, head=head, lam=0.5 if head == "ls" else None)
    assert first.num_classes == CLASSES - 1
    calls = []
    real_embed = type(first).embed
    first.embed = lambda images, *a_, **k: calls.append(len(images)) or real_embed(first, images, *a_, **k)
    grown = A.update(first, b, lam=0.5 if head == "ls" else None)
    assert calls == [sum(1 for _ in b.rglob("*.png"))]          # only the new images were embedded
    scratch = A.adapt(checkpoint, folders[0], head=head, lam=0.5 if head == "ls" else None)
    order = [grown.class_names.index(c) for c in scratch.class_names]
    from fewshot.adaptation.classifier import read_images
    x, _, _ = read_images(sorted(folders[1].rglob("*.png")), scratch.preprocess)
    with torch.no_grad():
        got, want = grown(x)[:, order], scratch(x)
    assert grown.report.images == [SUPPORT] * CLASSES
    assert grown.report.added == [2] * (CLASSES - 1) + [SUPPORT]
    assert torch.equal(class_counts(grown.head)[order], class_counts(scratch.head))
    if head == "proto":
        torch.testing.assert_close(grown.head.sums[0][order], scratch.head.sums[0], rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # ls: without a fixed lambda, update re-chooses it by GCV from the statistics
    if head == "ls":
        regrown = A.update(first, b)
        assert regrown.head.lam == regrown.head.stats.gcv(DEFAULT_GRID)[0]


def test_adapt_accepts_imageset_and_tensors(checkpoint, folders):  # noqa: F811
    clf = A.adapt(checkpoint, folders[0], head="proto")
    imgs, y, names, _ = A._support_tensors(folders[0], clf.preprocess)
    from episodes.imageset import ImageSet
    ims = ImageSet(imgs, y, names, [str(i) for i in range(len(y))])
    for support in (ims, (imgs, y, names)):
        other = A.adapt(checkpoint, support, head="proto")
        assert other.class_names == names
        torch.testing.assert_close(other.head.sums, clf.head.sums)


def test_head_from_results_json(checkpoint, folders, tmp_path):  # noqa: F811
    doc = {"transform": "l2", "results": [
        {"head": "proto", "shot": 1, "mean": 0.9}, {"head": "proto", "shot": 5, "mean": 0.91},
        {"head": "ls-mlp", "shot": 5, "mean": 0.99}, {"head": "nn", "shot": 5, "mean": 0.95}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    assert A.head_from_results(path) == ("nn", "l2")
    clf = A.adapt(checkpoint, folders[0], results=path)
    assert clf.head_kind == "nn" and clf.transform == "l2"


# ------------------------------------------------------------------ commands
def _adapt_cli(checkpoint, support, out, *extra):  # noqa: F811
    return main(["adapt", "--checkpoint", str(checkpoint), "--support", str(support), "--out", str(out),
                 *extra])


def test_cli_adapt_then_predict_csv_accuracy_confusion(checkpoint, folders, tmp_path, capsys,  # noqa: F811
                                                       monkeypatch):
    support, query = folders
    model = tmp_path / "model.fewshot"
    assert _adapt_cli(checkpoint, support, model, "--head", "ls") == 0
    out = capsys.readouterr().out
    for c in sorted(p.name for p in support.iterdir()):
        assert c in out
    assert "leave-one-out accuracy" in out and model.exists()

    csv_path = tmp_path / "pred.csv"
    png = tmp_path / "cm.png"
    assert main(["predict", "--model", str(model), str(query), "--out", str(csv_path), "--top-k", "2",
                 "--confusion", str(png)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))
    assert rows[0] == ["path", "label", "probability", "top_k"]
    assert len(rows) == 1 + CLASSES * QUERY
    for _path, label, prob, topk in rows[1:]:
        names = [t.split(":")[0] for t in topk.split(";")]
        assert len(names) == 2 and names[0] == label and 0 < float(prob) <= 1
    acc = sum(r[0].split("/")[-2] == r[1] for r in rows[1:]) / (len(rows) - 1)
    assert f"accuracy: {acc:.4f}" in printed and csv_path.read_text() in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # without --out or --confusion predict prints and writes nothing
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["predict", "--model", str(model), str(query)]) == 0
    assert "accuracy:" in capsys.readouterr().out and not list(here.iterdir())

    # '-' reads paths from stdin; --reject 1.0 rejects everything
    files = sorted(str(p) for p in query.rglob("*.png"))[:4]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(files) + "\n"))
    assert main(["predict", "--model", str(model), "-", "--reject", "1.0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.split(",")[1] == "unknown" for line in lines[1:])


def test_cli_adapt_int8_model_predicts_like_float32(checkpoint, folders, tmp_path, capsys):  # noqa: F811
    support, query = folders
    fp32, int8 = tmp_path / "fp32.fewshot", tmp_path / "int8.fewshot"
    assert _adapt_cli(checkpoint, support, fp32, "--head", "proto") == 0
    assert _adapt_cli(checkpoint, support, int8, "--head", "proto", "--int8") == 0
    capsys.readouterr()
    labels = []
    for model in (fp32, int8):
        assert main(["predict", "--model", str(model), str(query)]) == 0
        rows = capsys.readouterr().out.strip().splitlines()[1:]
        labels.append([r.split(",")[1] for r in rows if r.count(",") >= 3])
    assert load_classifier(int8).int8 and not load_classifier(fp32).int8
    agree = sum(a == b for a, b in zip(*labels)) / len(labels[0])
    assert agree >= 0.8, agree


def test_cli_update_adds_a_class(checkpoint, folders, tmp_path, capsys):  # noqa: F811
    a, b = _split(folders[0], tmp_path)
    model = tmp_path / "m.fewshot"
    assert _adapt_cli(checkpoint, a, model, "--head", "proto") == 0
    assert main(["adapt", "--update", str(model), "--support", str(b)]) == 0
    out = capsys.readouterr().out
    clf = load_classifier(model)
    assert clf.num_classes == CLASSES and sorted(clf.head.counts[0].tolist()) == [SUPPORT] * CLASSES
    assert "added by this update" in out


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    return errors[0]


def test_cli_bad_support_folders(checkpoint, folders, tmp_path, capsys):  # noqa: F811
    support = tmp_path / "s"
    shutil.copytree(folders[0], support)
    first = sorted(support.iterdir())[0]
    (first / "notes.txt").write_text("hello")
    (first / "broken.png").write_bytes(b"\x89PNG not really")
    model = tmp_path / "m.fewshot"
    # non-strict: both named in warnings, skipped, model written
    assert _adapt_cli(checkpoint, support, model) == 0
    err = capsys.readouterr().err
    assert "notes.txt" in err and "broken.png" in err and model.exists()
    # strict: one line naming the file, exit 2, nothing written
    model2 = tmp_path / "m2.fewshot"
    msg = _one_line_error(capsys, _adapt_cli(checkpoint, support, model2, "--strict"))
    assert ("notes.txt" in msg or "broken.png" in msg) and not model2.exists()
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]

    (first / "notes.txt").unlink()
    (first / "broken.png").unlink()
    empty = support / "zzz_empty"
    empty.mkdir()
    msg = _one_line_error(capsys, _adapt_cli(checkpoint, support, model2))
    assert "zzz_empty" in msg and "no images" in msg and not model2.exists()
    (empty / "bad.jpg").write_bytes(b"junk")       # a class whose only file is unreadable
    msg = _one_line_error(capsys, _adapt_cli(checkpoint, support, model2))
    assert "zzz_empty" in msg and not model2.exists()
    shutil.rmtree(empty)

    single = tmp_path / "single"
    shutil.copytree(first, single / first.name)
    msg = _one_line_error(capsys, _adapt_cli(checkpoint, single, model2))
    assert "single class" in msg and not model2.exists()


def test_cli_failures_leave_old_model_intact(checkpoint, folders, tmp_path, capsys):  # noqa: F811
    model = tmp_path / "m.fewshot"
    assert _adapt_cli(checkpoint, folders[0], model) == 0
    before = model.read_bytes()
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "a.png").write_bytes(b"garbage")
    msg = _one_line_error(capsys, main(["adapt", "--update", str(model), "--support", str(bad), "--strict"]))
    assert "a.png" in msg and model.read_bytes() == before
    msg = _one_line_error(capsys, _adapt_cli(checkpoint, tmp_path / "nope", model))
    assert "nope" in msg and model.read_bytes() == before

    tampered = tmp_path / "t.fewshot"
    doc = torch.load(model, weights_only=True)
    doc["payload"]["temperature"] = 123.0
    torch.save(doc, tampered)
    msg = _one_line_error(capsys, main(["predict", "--model", str(tampered), str(folders[1])]))
    assert str(tampered) in msg and "modified" in msg
    doc["version"] = 99
    torch.save(doc, tampered)
    msg = _one_line_error(capsys, main(["adapt", "--update", str(tampered), "--support", str(folders[0])]))
    assert "version 99" in msg and str(tampered) in msg
