"""Heads: exactness against scikit-learn and straightforward loops, LOO against brute force,
gradients, ill-conditioned episodes, and real features (scikit-learn digits, Omniglot pixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge, RidgeClassifier

from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.errors import FewShotError
from fewshot.heads import (
    HEADS,
    LSHead,
    LSMLPHead,
    NNHead,
    ProtoHead,
    as_head,
    get_head,
    loo_residuals,
    loo_select,
    ridge_fit,
)

torch.set_default_dtype(torch.float32)


def _episodes(e=4, way=5, shot=3, d=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(way).repeat_interleave(shot).expand(e, -1).contiguous()
    centres = torch.randn(e, way, d, generator=g, dtype=dtype)
    x = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, d)) + 0.7 * torch.randn(
        e, way * shot, d, generator=g, dtype=dtype)
    q = centres.repeat_interleave(4, 1) + 0.7 * torch.randn(e, way * 4, d, generator=g, dtype=dtype)
    return x, labels, q


# ------------------------------------------------------------------------------------------ ls
@pytest.mark.parametrize("d", [6, 40])           # D < n (primal) and D > n (dual)
@pytest.mark.parametrize("lam", [1e-3, 0.5, 30.0])
def test_ridge_equals_sklearn_ridge(d, lam):
    x, y, _ = _episodes(d=d)
    Y = torch.nn.functional.one_hot(y, 5).double()
    W, b = ridge_fit(x, Y, lam)
    for e in range(x.shape[0]):
        ref = Ridge(alpha=lam, fit_intercept=True, solver="cholesky").fit(x[e].numpy(), Y[e].numpy())
        np.testing.assert_allclose(W[e].numpy(), ref.coef_.T, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(b[e].numpy(), ref.intercept_, rtol=1e-7, atol=1e-9)
    W0, b0 = ridge_fit(x, Y, lam, fit_intercept=False)
    ref = Ridge(alpha=lam, fit_intercept=False).fit(x[1].numpy(), Y[1].numpy())
    np.testing.assert_allclose(W0[1].numpy(), ref.coef_.T, rtol=1e-7, atol=1e-9)
    assert torch.all(b0 == 0)


@pytest.mark.parametrize("d", [6, 40])
def test_dual_equals_primal(d):
    x, y, _ = _episodes(d=d)
    Y = torch.nn.functional.one_hot(y, 5).double()
    lam = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)  # one lambda per episode
    Wp, bp = ridge_fit(x, Y, lam, solver="primal")
    Wd, bd = ridge_fit(x, Y, lam, solver="dual")
    torch.testing.assert_close(Wp, Wd, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(bp, bd, rtol=1e-8, atol=1e-10)


def _brute_loo(x, Y, grid, fit_intercept=True):
    e, n, _ = x.shape
    out = torch.empty(e, len(grid), n, Y.shape[-1], dtype=torch.float64)
    keep = torch.stack([torch.arange(n)[torch.arange(n) != i] for i in range(n)])   # [n, n-1]
    for ei in range(e):
        for li, lam in enumerate(grid):   # n separate refits, one per left-out point (batched)
            W, b = ridge_fit(x[ei][keep], Y[ei][keep], lam, fit_intercept=fit_intercept)
            out[ei, li] = Y[ei] - ((x[ei].unsqueeze(1) @ W).squeeze(1) + b)
    return out


@pytest.mark.parametrize("d", [4, 30])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_loo_residuals_equal_brute_force_refits(d, fit_intercept):
    x, y, _ = _episodes(e=3, shot=2, d=d)
    Y = torch.nn.functional.one_hot(y, 5).double()
    grid = [1e-3, 1e-1, 1.0, 10.0, 1e3]
    fast = loo_residuals(x, Y, grid, fit_intercept=fit_intercept)
    torch.testing.assert_close(fast, _brute_loo(x, Y, grid, fit_intercept), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("criterion", ["squared", "error"])
def test_loo_lambda_equals_brute_force_choice(criterion):
    x, y, _ = _episodes(e=4, shot=3, d=20, seed=3)
    Y = torch.nn.functional.one_hot(y, 5).double()
    grid = [1e-2, 1e-1, 1.0, 10.0, 100.0]
    brute = _brute_loo(x, Y, grid)
    sq = brute.pow(2).mean((2, 3))
    if criterion == "squared":
        want = sq.argmin(1)
    else:
        wrong = ((Y.unsqueeze(1) - brute).argmax(-1) != y.unsqueeze(1)).double().mean(-1)
        want = sq.masked_fill(wrong != wrong.min(1, keepdim=True).values, float("inf")).argmin(1)
    got = loo_select(x, Y, grid, criterion=criterion)
    assert got.index.tolist() == want.tolist()
    assert got.lam.tolist() == [grid[i] for i in want.tolist()]


def test_kernel_loo_equals_brute_force_and_cosine_kernel_equals_l2_ridge():
    x, y, q = _episodes(e=2, shot=3, d=10, seed=5)
    Y = torch.nn.functional.one_hot(y, 5).double()
    grid = [0.05, 0.5, 5.0]
    gamma = 0.05
    K = torch.exp(-gamma * torch.cdist(x, x).pow(2))
    fast = loo_residuals(K, Y, grid, precomputed=True)
    n = x.shape[1]
    for li, lam in enumerate(grid):
        head = LSMLPHead(kind="rbf", gamma=gamma, lam=lam)
        for i in range(n):
            keep = torch.arange(n) != i
            pred = head.fit(x[:, keep], y[:, keep], 5)(x[:, i:i + 1])[:, 0]
            torch.testing.assert_close(fast[:, li, i], Y[:, i] - pred, rtol=1e-6, atol=1e-8)
    # cosine kernel ridge = ridge with intercept on L2-normalised features (same lambda)
    xn, qn = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(q, dim=-1)
    a = LSMLPHead(kind="cosine", lam=0.3).fit(x, y, 5)(q)
    b = LSHead(lam=0.3).fit(xn, y, 5)(qn)
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-8)


def test_ls_head_predictions_equal_ridge_classifier():
    x, y, q = _episodes(e=6, shot=5, d=32, seed=1, dtype=torch.float32)
    pred = LSHead(lam=2.0).fit(x, y, 5)(q).argmax(-1)
    for e in range(x.shape[0]):
        ref = RidgeClassifier(alpha=2.0).fit(x[e].double().numpy(), y[e].numpy())
        assert pred[e].tolist() == ref.predict(q[e].double().numpy()).tolist()


def test_ls_exposes_its_tensors_and_chooses_lambda_per_episode():
    x, y, q = _episodes(e=5, shot=2, d=16, dtype=torch.float32)
    fitted = LSHead().fit(x, y, 5)
    assert fitted.weight.shape == (5, 16, 5) and fitted.bias.shape == (5, 5) and fitted.lam.shape == (5,)
    assert fitted.weight.dtype == torch.float32 and fitted(q).shape == (5, 20, 5)


# --------------------------------------------------------------------------------- proto / nn
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_proto_equals_loop(distance):
    x, y, q = _episodes(e=3, shot=4, d=8)
    logits = ProtoHead(distance=distance).fit(x, y, 5)(q)
    for e in range(3):
        for qi in range(q.shape[1]):
            for c in range(5):
                p = x[e][y[e] == c].mean(0)
                if distance == "euclidean":
                    want = -((q[e, qi] - p) ** 2).sum()
                else:
                    want = torch.dot(q[e, qi], p) / (q[e, qi].norm() * p.norm())
                assert torch.isclose(logits[e, qi, c], want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("k,weighted", [(1, True), (3, True), (4, False)])
def test_nn_equals_loop(distance, k, weighted):
    x, y, q = _episodes(e=3, shot=3, d=8, seed=2)
    logits = NNHead(k=k, distance=distance, weighted=weighted).fit(x, y, 5)(q)
    for e in range(3):
        for qi in range(q.shape[1]):
            if distance == "euclidean":
                d = [float((q[e, qi] - s).norm()) for s in x[e]]
            else:
                d = [1 - float(torch.dot(q[e, qi], s) / (q[e, qi].norm() * s.norm())) for s in x[e]]
            if k == 1:
                want = [-min(d[j] for j in range(len(d)) if y[e, j] == c) for c in range(5)]
            else:
                order = sorted(range(len(d)), key=lambda j: d[j])[:k]
                want = [sum((1 / (d[j] + 1e-8) if weighted else 1.0) for j in order if y[e, j] == c)
                        for c in range(5)]
            np.testing.assert_allclose(logits[e, qi].numpy(), want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- differentiability
@pytest.mark.parametrize("name", ["proto", "ls", "ls:lam=0.5", "ls-mlp"])
def test_gradients_flow(name):
    x, y, q = _episodes(e=2, shot=2, d=10, dtype=torch.float32)
    x.requires_grad_(True)
    q.requires_grad_(True)
    logits = get_head(name).fit(x, y, 5)(q)
    target = torch.arange(5).repeat_interleave(4).repeat(2)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), target)
    loss.backward()
    for t in (x, q):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_ridge_gradcheck():
    x, y, _ = _episodes(e=1, shot=2, d=6)
    Y = torch.nn.functional.one_hot(y, 5).double()
    x.requires_grad_(True)
    for solver in ("primal", "dual"):
        assert torch.autograd.gradcheck(lambda a, s=solver: ridge_fit(a, Y, 0.3, solver=s)[0], (x,))


# ------------------------------------------------------------------------------ ill-conditioned
@pytest.mark.parametrize("name", ["proto", "nn", "nn:k=3", "ls", "ls:lam=1e-6", "ls-mlp", "ls-mlp:kind=rbf",
                                  "ls-mlp:kind=cosine", "logreg"])
def test_ill_conditioned_episodes_give_finite_logits(name):
    g = torch.Generator().manual_seed(0)
    one_shot = torch.randn(3, 5, 640, generator=g)                        # 1-shot, D >> S
    y1 = torch.arange(5).expand(3, -1)
    dup = torch.randn(3, 5, 64, generator=g).repeat_interleave(5, 1)     # every support row 5 times
    y5 = torch.arange(5).repeat_interleave(5).expand(3, -1)
    big = 1e4 * torch.randn(3, 10, 64, generator=g)                       # huge feature scale
    y2 = torch.arange(5).repeat_interleave(2).expand(3, -1)
    for x, y in ((one_shot, y1), (dup, y5), (big, y2)):
        head = get_head(name)
        logits = head.fit(x, y, 5)(x)
        assert torch.isfinite(logits).all()
        if name != "logreg" or x is not big:
            assert (logits.argmax(-1) == y).float().mean() == 1.0   # support classified as labelled


# ----------------------------------------------------------------------------------- registry
def test_registry_and_user_heads():
    assert set(HEADS) == {"proto", "nn", "ls", "ls-mlp", "logreg", "proto-dc", "tangent"}
    with pytest.raises(FewShotError, match="unknown head 'svm'; choose one of proto, nn, ls, ls-mlp, logreg, "
                                           "proto-dc, tangent"):
        get_head("svm")
    with pytest.raises(FewShotError, match=r"unknown head 'proto' options \['k'\]; valid: distance"):
        get_head("proto", k=3)
    assert get_head("nn:k=5,distance=cosine").k == 5
    assert get_head("ls", distance="cosine").lam == "loo"          # distance only reaches heads that use it
    assert get_head("proto", distance="cosine").distance == "cosine"

    def centroid(support, labels, way):
        return ProtoHead().fit(support, labels, way)

    head = as_head(centroid)
    x, y, q = _episodes(e=2)
    assert head.name == "centroid"
    torch.testing.assert_close(head.fit(x, y, 5)(q), ProtoHead().fit(x, y, 5)(q))


# ------------------------------------------------------------------------------- real features
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.data).float() / 16, torch.from_numpy(d.target)


def test_real_digits_pixels_all_heads_learn_and_ls_matches_sklearn():
    feats, labels = _digits()
    eps = sample_episodes(labels, EpisodeSpec(5, 5, 10), 20, seed=0)
    s, sy, q, qy = eps.gather(feats)
    accs = {}
    for name in HEADS:
        if name in ("proto-dc", "tangent"):   # base classes apart from these: tests/test_proto_dc.py;
            continue                            # each image's views: tests/test_tangent.py
        accs[name] = float((get_head(name).fit(s, sy, 5)(q).argmax(-1) == qy).float().mean())
    assert min(accs.values()) > 0.85, accs                  # chance is 0.2; digits pixels are easy
    fitted = LSHead().fit(s, sy, 5)
    pred = fitted(q).argmax(-1)
    for e in range(0, 20, 4):
        ref = RidgeClassifier(alpha=float(fitted.lam[e])).fit(s[e].double().numpy(), sy[e].numpy())
        assert pred[e].tolist() == ref.predict(q[e].double().numpy()).tolist()


def test_real_omniglot_pixels(omniglot_dir):
    read_omniglot = pytest.importorskip("episodes.readers.omniglot").read_omniglot
    data = read_omniglot(omniglot_dir / "images_background_small1.zip", image_size=28)
    feats = data.images.flatten(1).float() / 255
    eps = sample_episodes(data, EpisodeSpec(5, 1, 5), 100, seed=0)
    s, sy, q, qy = eps.gather(feats)
    for name in ("proto", "nn", "ls", "ls-mlp"):
        logits = get_head(name).fit(s, sy, 5)(q)
        assert torch.isfinite(logits).all()
        assert float((logits.argmax(-1) == qy).float().mean()) > 0.3   # raw pixels, 1-shot: above chance


# ----------------------------------------------------------------------------------- partial_fit
def _two_chunks(x, y):
    """Chunk 1: the first 2 shots of classes 0-2; chunk 2: every other row (more shots of 0-2 and
    the new classes 3 and 4). The same rows in every episode, so both chunks stay ``[E, S, D]``."""
    shot = int((y[0] == 0).sum())
    first = (y[0] < 3) & (torch.arange(y.shape[1]) % shot < 2)
    return (x[:, first], y[:, first]), (x[:, ~first], y[:, ~first])


@pytest.mark.parametrize("name", ["proto", "proto:distance=cosine", "nn", "nn:k=3", "nn:distance=cosine",
                                  "ls:lam=0.5", "ls-mlp", "ls-mlp:kind=rbf", "logreg"])
def test_partial_fit_in_two_chunks_equals_fit_at_once(name):
    x, y, q = _episodes(e=3, shot=4, d=12, seed=7)
    (xa, ya), (xb, yb) = _two_chunks(x, y)
    head = get_head(name)
    grown = head.partial_fit(head.partial_fit(None, xa, ya, 3), xb, yb, 5)
    tol = 1e-3 if name == "logreg" else 1e-8   # logreg: a refit, lbfgs stops within its tolerance
    torch.testing.assert_close(grown(q).double(), head.fit(x, y, 5)(q).double(), rtol=tol, atol=tol)
    once = head.partial_fit(None, x, y, 5)
    torch.testing.assert_close(grown(q).double(), once(q).double(), rtol=tol, atol=tol)


def test_ls_partial_fit_keeps_statistics_and_rechooses_lambda_by_gcv():
    x, y, q = _episodes(e=4, shot=4, d=10, seed=8)
    (xa, ya), (xb, yb) = _two_chunks(x, y)
    head = LSHead()
    first = head.partial_fit(None, xa, ya, 3)
    Ya = torch.nn.functional.one_hot(ya, 3).double()
    assert torch.equal(first.lam, loo_select(xa, Ya).lam)          # first chunk: exact LOO, as fit()
    grown = head.partial_fit(first, xb, yb, 5)
    assert torch.equal(grown.lam, grown.stats.gcv(head.grid)[0])     # then GCV from the statistics
    W, b = ridge_fit(x, torch.nn.functional.one_hot(y, 5).double(), grown.lam)
    torch.testing.assert_close(grown.weight, W, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grown.bias, b, rtol=1e-8, atol=1e-10)
    assert torch.equal(grown.stats.counts, torch.full((4, 5), 4))


def test_ls_statistics_keep_the_rows_while_fewer_than_features_with_the_same_fit():
    from fewshot.heads.ridge_stats import RidgeRows, RidgeStats, ridge_statistics

    x, y, q = _episodes(e=3, shot=2, d=40, seed=11)                    # 10 rows of 40-d features
    rows, stats = RidgeRows.from_rows(x, y, 5), RidgeStats.from_rows(x, y, 5)
    assert isinstance(ridge_statistics(x, y, 5), RidgeRows) and isinstance(ridge_statistics(x[..., :8], y, 5),
                                                                           RidgeStats)
    lam = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    for a, b in zip(rows.solve(lam), stats.solve(lam)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    grid = (0.01, 0.1, 1.0, 10.0)
    torch.testing.assert_close(rows.gcv(grid)[1], stats.gcv(grid)[1], rtol=1e-6, atol=1e-8)
    for a, b in zip(rows.loo(lam, x[0]), stats.loo(lam, x[0])):          # hat values and fitted values
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    (xa, ya), (xb, yb) = _two_chunks(x, y)
    head = LSHead()
    grown = head.partial_fit(head.partial_fit(None, xa, ya, 3), xb, yb, 5)
    assert isinstance(grown.stats, RidgeRows) and torch.equal(grown.stats.counts, torch.full((3, 5), 2))
    assert torch.equal(grown.lam, stats.gcv(head.grid)[0])              # GCV as the D x D statistics give
    W, b = ridge_fit(x, torch.nn.functional.one_hot(y, 5).double(), grown.lam)
    torch.testing.assert_close(grown.weight, W, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grown.bias, b, rtol=1e-8, atol=1e-10)
    again = type(grown).from_state_dict(grown.state_dict())
    assert isinstance(again.stats, RidgeRows) and torch.equal(again(q), grown(q))
    more = head.partial_fit(grown, *_episodes(e=3, shot=8, d=40, seed=12)[:2], 5)   # 50 rows of 40-d
    assert isinstance(more.stats, RidgeStats) and int(more.stats.n[0]) == 50


def test_ls_mlp_random_features_grow_as_ridge_on_the_fixed_hidden_layer():
    x, y, q = _episodes(e=2, shot=4, d=12, seed=9)
    (xa, ya), (xb, yb) = _two_chunks(x, y)
    head = get_head("ls-mlp:kind=random,width=64,lam=0.5")
    grown = head.partial_fit(head.partial_fit(None, xa, ya, 3), xb, yb, 5)
    ridge = LSHead(lam=0.5).fit(grown.hidden(x), y, 5)              # the first chunk's input scale
    torch.testing.assert_close(grown(q), ridge(grown.hidden(q)), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", ["proto", "nn:k=3", "ls", "ls-mlp", "ls-mlp:kind=random,width=32", "logreg"])
def test_fitted_state_dict_round_trip(name):
    x, y, q = _episodes(e=2, shot=3, d=8, seed=10)
    head = get_head(name)
    fitted = head.partial_fit(None, x, y, 5)
    state = fitted.state_dict()
    assert all(isinstance(v, (torch.Tensor, str, int, float, bool, type(None))) for v in state.values())
    again = type(fitted).from_state_dict(state)
    assert torch.equal(again(q), fitted(q))


def test_partial_fit_refuses_what_it_cannot_extend():
    x, y, _ = _episodes(e=2, shot=2, d=6)
    with pytest.raises(FewShotError, match="keeps no statistics"):
        LSHead().partial_fit(LSHead().fit(x, y, 5), x, y, 5)
    fitted = ProtoHead().partial_fit(None, x, y, 5)
    with pytest.raises(FewShotError, match="way 4 is below the 5 classes"):
        ProtoHead().partial_fit(fitted, x, y.clamp_max(3), 4)
    with pytest.raises(FewShotError, match="6-d features"):
        ProtoHead().partial_fit(fitted, x[..., :4], y, 5)
