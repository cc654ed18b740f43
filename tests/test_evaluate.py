"""The evaluation protocol end to end: same episodes for every head, manifests, report files,
the CLI (in-process) with its one-line errors, cross-domain input and the Omniglot challenge runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.imageset import ImageSet
from episodes.manifest import save_manifest
from episodes.protocols import EpisodeProtocol
from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.cli import main
from fewshot.evaluation.evaluate import build_heads, evaluate, score_episodes
from fewshot.evaluation.features import embed
from fewshot.evaluation.report import write_report
from fewshot.models.checkpoint import FORMAT, save_checkpoint
from fewshot.models.encoders import build_encoder, encoder_spec
from fewshot.models.preprocess import Preprocess


def _checkpoint(path, *, nan=False, distance="euclidean"):
    torch.manual_seed(0)
    model = build_encoder("conv4", in_channels=1, num_classes=4, image_size=16, width=8)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if nan:
        state = {k: v.float() * float("nan") if v.is_floating_point() else v for k, v in state.items()}
    doc = {"encoder": encoder_spec(model), "model": state, "hash": f"{int(nan)}{distance[:3]}" * 2,
           "preprocess": Preprocess(16, 1).to_dict(), "distance": distance,
           "base_mean": torch.zeros(model.embedding_dim)}
    if nan:  # save_checkpoint refuses non-finite states: write the poisoned file as a foreign tool would
        torch.save({"format": FORMAT, **doc}, path)
    else:
        save_checkpoint(path, doc)
    return path


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    """scikit-learn's 8x8 digits as a 3-channel ImageSet: cross-domain for a 1-channel 16px encoder."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images * 255 / 16).round().astype(np.uint8)).unsqueeze(1)
    return ImageSet(images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(d.target),
                    [str(i) for i in range(10)], [f"digit{i}" for i in range(len(images))], name="digits")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def test_every_head_on_the_same_episodes_and_report(ckpt, digits, tmp_path):
    heads = "proto,nn,ls"
    res = evaluate(ckpt, digits, heads=heads, episodes=EpisodeProtocol(shots=(1, 5), episodes=60, seed=3),
                   progress=False, device="cpu")
    write_report(res, tmp_path)
    # independent recomputation: embed, draw the same seeded episodes, score each head
    from fewshot.models.checkpoint import load_encoder

    model, info = load_encoder(ckpt)
    feats = embed(model, digits, info["preprocess"], device="cpu", progress=False)
    for shot in (1, 5):
        eps = sample_episodes(digits, EpisodeSpec(5, shot, 15), 60, seed=3)
        want = score_episodes(feats, eps, build_heads(heads, "euclidean"))
        for h in ("proto", "nn", "ls"):
            np.testing.assert_allclose(res.accuracy[(h, shot)], want[h], atol=1e-12)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["dataset"]["fingerprint"] == digits.fingerprint and doc["config"]["transform"] == "none"
    assert {"torch", "numpy", "scipy", "scikit-learn", "fewshot"} <= set(doc["versions"])
    assert len(doc["results"]) == 6 and len(doc["paired"]) == 6
    for r in doc["results"]:
        assert set(r) >= {"head", "way", "shot", "query", "episodes", "accuracy", "ci95"}
        assert 0 <= r["accuracy"] <= 1 and r["episodes"] == 60
    for p in doc["paired"]:
        assert set(p) >= {"head_a", "head_b", "shot", "diff", "ci95", "p_value", "wins", "ties", "losses"}
    rows = (tmp_path / "episodes.csv").read_text().splitlines()
    assert rows[0] == "shot,episode,proto,nn,ls" and len(rows) == 1 + 2 * 60
    assert (tmp_path / "accuracy_vs_shot.png").read_bytes()[:4] == b"\x89PNG"
    assert "| proto |" in (tmp_path / "results.md").read_text()
    assert "5-way" in res.table() and "beats" in res.table() or "cannot be told apart" in res.table()


def test_chunks_manifest_and_seed_reproducibility(ckpt, digits, tmp_path):
    feats = torch.randn(len(digits), 12, generator=torch.Generator().manual_seed(0))
    eps = sample_episodes(digits, EpisodeSpec(5, 2, 4), 33, seed=1)
    heads = build_heads(["proto", "nn:k=3", "ls", "ls-mlp"])
    whole = score_episodes(feats, eps, heads)
    chunked = score_episodes(feats, eps, heads, chunk_size=7)
    for h in whole:
        np.testing.assert_array_equal(whole[h], chunked[h])
    protocol = EpisodeProtocol(shots=(2,), query=4, episodes=33, seed=1)
    drawn = evaluate(ckpt, digits, heads="proto,ls", episodes=protocol, progress=False, device="cpu")
    again = evaluate(ckpt, digits, heads="proto,ls", episodes=protocol, progress=False, device="cpu")
    manifest = save_manifest(tmp_path / "eps.json", eps, digits)
    loaded = evaluate(ckpt, digits, heads="proto,ls", episodes=manifest, progress=False, device="cpu")
    assert loaded.config["episodes_file"] == str(manifest) and loaded.config["seed"] is None
    fixed = evaluate(ckpt, digits, heads="proto,ls", episodes=eps, progress=False, device="cpu")
    for h in ("proto", "ls"):
        np.testing.assert_array_equal(drawn.accuracy[(h, 2)], again.accuracy[(h, 2)])
        np.testing.assert_array_equal(drawn.accuracy[(h, 2)], loaded.accuracy[(h, 2)])
        np.testing.assert_array_equal(drawn.accuracy[(h, 2)], fixed.accuracy[(h, 2)])


@pytest.fixture
def cli_data(monkeypatch, digits):
    """``--data digits`` resolves to the fixture (data loading itself is the DATA side's, tested there)."""
    import fewshot.commands.eval as cmd

    def fake(spec, split):
        if spec.startswith("omniglot-runs:"):
            return real(spec, split)
        return digits, None

    real = cmd.load_eval_data
    monkeypatch.setattr(cmd, "load_eval_data", fake)
    return digits


def test_cli_eval_writes_report(ckpt, cli_data, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", "digits", "--heads", "proto,ls,logreg",
               "--shot", "1,5", "--episodes", "20", "--out", str(out), "--quiet", "--device", "cpu",
               "--transform", "l2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "proto" in text and "logreg" in text and "accuracy %" in text
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "episodes.csv",
                                                "accuracy_vs_shot.png"}
    assert json.loads((out / "results.json").read_text())["config"]["transform"] == "l2"
    _one_line_error(capsys, main(["eval", "--checkpoint", str(ckpt), "--data", "digits", "--tsne"]), "--out")


def test_cli_eval_power_transform(ckpt, cli_data, tmp_path, capsys):
    """``--transform pt`` (square root, then unit length) on a ReLU encoder's features: the
    figures of the heads on features transformed by hand, recorded in results.json."""
    out = tmp_path / "pt"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", "digits", "--heads", "proto,ls", "--shot", "1",
               "--episodes", "20", "--seed", "4", "--out", str(out), "--quiet", "--device", "cpu",
               "--transform", "pt", "--no-retrieval"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["transform"] == "pt"
    from fewshot.models.checkpoint import load_encoder

    model, info = load_encoder(ckpt)
    feats = embed(model, cli_data, info["preprocess"], device="cpu", progress=False)
    assert bool((feats >= 0).all())                       # conv4 ends in a ReLU: pt applies
    eps = sample_episodes(cli_data, EpisodeSpec(5, 1, 15), 20, seed=4)
    want = score_episodes(torch.nn.functional.normalize(feats.sqrt(), dim=-1), eps,
                          build_heads("proto,ls", "euclidean"))
    got = {r["head"]: r["accuracy"] for r in doc["results"]}
    for h in ("proto", "ls"):
        assert got[h] == pytest.approx(float(np.mean(want[h])))


def test_tsne_picture(digits, tmp_path):
    from fewshot.evaluation.evaluate import EvalResult, tsne_embedding
    from fewshot.evaluation.report import write_report

    feats = digits.images.flatten(1).float()
    res = EvalResult(["proto"], [1], 5, 15, {("proto", 1): np.array([0.5, 0.7])},
                     tsne=tsne_embedding(feats, digits, 0, max_classes=3, per_class=12))
    assert len(res.tsne["points"]) == 36
    paths = write_report(res, tmp_path)
    assert paths["tsne.png"].read_bytes()[:4] == b"\x89PNG"


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_cli_bad_input(ckpt, cli_data, tmp_path, capsys):
    base = ["eval", "--checkpoint", str(ckpt), "--data", "digits", "--episodes", "5", "--quiet",
            "--device", "cpu"]
    _one_line_error(capsys, main(base + ["--shot", "300"]), "fewer than shot+query=315")
    _one_line_error(capsys, main(base + ["--heads", "proto,svm"]), "unknown head 'svm'",
                    "proto, nn, ls, ls-mlp, logreg")
    other = ImageSet(cli_data.images[:500], cli_data.labels[:500], cli_data.class_names, cli_data.ids[:500],
                     name="other")
    foreign = save_manifest(tmp_path / "foreign.json", sample_episodes(other, EpisodeSpec(5, 1, 2), 3), other)
    _one_line_error(capsys, main(base + ["--episodes-file", str(foreign)]), "foreign.json", "fingerprint")
    bad = _checkpoint(tmp_path / "nan.pt", nan=True)
    _one_line_error(capsys, main(["eval", "--checkpoint", str(bad), "--data", "digits", "--episodes", "5",
                                  "--quiet", "--device", "cpu"]), "non-finite")
    _one_line_error(capsys, main(base + ["--checkpoint", str(tmp_path / "missing.pt")]), "no such checkpoint")


def _write_runs(root, runs=2, classes=20, seed=0):
    """Challenge runs in the official layout, from random binary glyphs (query = glyph + noise)."""
    rng = np.random.default_rng(seed)
    for r in range(1, runs + 1):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        lines = []
        order = rng.permutation(classes)
        for k in range(classes):
            glyph = rng.random((20, 20)) < 0.3
            Image.fromarray((~glyph * 255).astype(np.uint8)).save(run / "training" / f"class{k + 1:02d}.png")
            noisy = glyph ^ (rng.random((20, 20)) < 0.05)
            j = order[k]
            Image.fromarray((~noisy * 255).astype(np.uint8)).save(run / "test" / f"item{j + 1:02d}.png")
            lines.append(f"run{r:02d}/test/item{j + 1:02d}.png run{r:02d}/training/class{k + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(sorted(lines)) + "\n")


def test_cli_omniglot_challenge_runs(ckpt, tmp_path, capsys):
    _write_runs(tmp_path / "all_runs")
    out = tmp_path / "res"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", f"omniglot-runs:{tmp_path / 'all_runs'}",
               "--heads", "proto,nn,ls", "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "error rate %" in text and "2 runs, 20-way 1-shot" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["challenge"] is True
    for r in doc["results"]:
        assert r["way"] == 20 and r["shot"] == 1 and r["episodes"] == 2
        assert r["error_rate"] == pytest.approx(1 - r["accuracy"])
