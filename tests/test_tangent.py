"""The tangent head (nearest neighbour under one-sided tangent distance to each support image's
view subspace) and the view directions evaluation computes for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_tta import _checkpoint, _model, digits  # noqa: F401 - fixture

from episodes.protocols import EpisodeProtocol
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import evaluate, score_episodes
from fewshot.evaluation.features import embed, transform
from fewshot.evaluation.tangents import ViewTangents, embed_with_tangents, view_tangents
from fewshot.evaluation.tta import TTA
from fewshot.heads import HEADS, get_head
from fewshot.models.preprocess import Preprocess


def test_a_query_along_the_support_images_view_direction_is_near_it():
    # class 0's image sits farther from the query, but the query differs from it only along the
    # direction its views move in; class 1's image is nearer and has no such direction
    s0, s1 = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([2.0, 1.0, 0.0])
    q = torch.tensor([3.0, 0.5, 0.0])                      # s0 + 3 e0 + 0.5 e1
    t0 = torch.tensor([[1.0, 0.0, 0.0]])                   # s0 moves along e0
    t1 = torch.tensor([[0.0, 0.0, 1.0]])                   # s1 along e2 (orthogonal to q - s1)
    support = torch.stack([s0, s1]).view(1, 2, 3)
    tangents = torch.stack([t0, t1]).view(1, 2, 1, 1, 3)
    logits = get_head("tangent").fit(support, torch.tensor([[0, 1]]), 2, tangents=tangents)(q.view(1, 1, 3))
    torch.testing.assert_close(logits, -torch.tensor([[[0.25, 1.25]]]))   # 0.5^2; 1^2 + 0.5^2
    assert int(get_head("nn").fit(support, torch.tensor([[0, 1]]), 2)(q.view(1, 1, 3)).argmax()) == 1
    # k=0 directions kept beyond what was given: k caps, and zero directions change nothing
    zero = torch.zeros(1, 2, 1, 2, 3)
    zero[:, :, :, :1] = tangents
    again = get_head("tangent:k=4").fit(support, torch.tensor([[0, 1]]), 2, tangents=zero)(q.view(1, 1, 3))
    torch.testing.assert_close(again, logits)


def test_blocks_sum_their_own_tangent_distances():
    g = torch.Generator().manual_seed(0)
    e, s, q, blocks, k, d = 3, 6, 4, 2, 2, 5
    support, query = torch.randn(e, s, blocks * d, generator=g), torch.randn(e, q, blocks * d, generator=g)
    tangents = torch.linalg.qr(torch.randn(e, s, blocks, d, k, generator=g)).Q.transpose(-1, -2)
    labels = torch.arange(s).repeat(e, 1) % 3
    logits = get_head(f"tangent:k={k}").fit(support, labels, 3, tangents=tangents)(query)
    diff = query.view(e, q, 1, blocks, d) - support.view(e, 1, s, blocks, d)          # [e,q,s,b,d]
    resid = diff - torch.einsum("eqsbk,esbkd->eqsbd", torch.einsum("eqsbd,esbkd->eqsbk", diff, tangents),
                                tangents)
    dist = resid.pow(2).sum((-2, -1))                                                 # [e,q,s]
    want = torch.stack([-dist[..., labels[0] == c].amin(-1) for c in range(3)], -1)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


def test_the_head_needs_directions_and_checks_them_in_one_line():
    support, labels = torch.randn(1, 2, 4), torch.tensor([[0, 1]])
    head = get_head("tangent")
    assert head.tangents == 16 and "tangent" not in HEADS.names(adaptable=True)
    with pytest.raises(FewShotError, match="needs the view directions"):
        head.fit(support, labels, 2)
    with pytest.raises(FewShotError, match="tangents must be"):
        head.fit(support, labels, 2, tangents=torch.zeros(1, 2, 1, 3, 3))
    with pytest.raises(FewShotError, match="option k"):
        get_head("tangent:k=0")


def test_view_directions_are_orthonormal_and_zero_where_views_do_not_spread():
    g = torch.Generator().manual_seed(1)
    views = torch.randn(5, 2, 8, 12, generator=g)
    views[0, 1] = views[0, 1, :1]                                       # no spread at all
    dirs = view_tangents(views, 16)
    assert dirs.shape == (5, 2, 7, 12)                                  # at most views - 1
    gram = dirs[1:] @ dirs[1:].transpose(-1, -2)
    torch.testing.assert_close(gram, torch.eye(7).expand_as(gram), atol=1e-5, rtol=0)
    assert torch.equal(dirs[0, 1], torch.zeros(7, 12))
    # the directions span the centred views: projecting them out leaves nothing
    centred = views[1:] - views[1:].mean(-2, keepdim=True)
    left = centred - centred @ dirs[1:].transpose(-1, -2) @ dirs[1:]
    assert float(left.abs().max()) < 1e-4


def test_one_pass_gives_embeds_features_and_the_transformed_view_means(digits):  # noqa: F811
    model, pre = _model(), Preprocess(16, 1)
    tta = TTA(4, seed=3, symmetries=2)
    feats, views = embed_with_tangents(model, digits.images[:30], pre, tta=tta, k=2, kind="pt", batch_size=16)
    assert torch.equal(feats, embed(model, digits.images[:30], pre, device="cpu", progress=False, tta=tta,
                                    batch_size=16))
    assert views.features.shape == (30, feats.shape[1]) and views.directions.shape[:3] == (30, 2, 2)
    assert views.directions.dtype == torch.float16 and len(views) == 30 and views.k == 2
    # the view mean of the image itself under one view of no augmentation is its transformed feature
    one = TTA(2, {"mode": "none"})
    f1, v1 = embed_with_tangents(model, digits.images[:5], pre, tta=one, k=1, kind="pt")
    torch.testing.assert_close(v1.features, transform(f1, "pt"), atol=1e-6, rtol=1e-5)
    assert torch.equal(v1.directions, torch.zeros(5, 1, 1, f1.shape[1], dtype=torch.float16))
    with pytest.raises(FewShotError, match="--tta N with N >= 2"):
        embed_with_tangents(model, digits.images[:5], pre, tta=TTA(1), k=1, kind="pt")


def test_eval_scores_the_tangent_head_on_the_same_episodes(tmp_path, digits):  # noqa: F811
    ckpt = _checkpoint(tmp_path / "t.pt", tta=TTA(6, seed=1, symmetries=2).to_dict())
    kw = dict(episodes=EpisodeProtocol(5, (1, 5), episodes=40), progress=False, device="cpu",
              transform="pt", cache_dir=tmp_path / "c")
    res = evaluate(ckpt, digits, heads="proto,tangent,tangent:k=2", **kw)
    alone = evaluate(ckpt, digits, heads="proto", **kw)
    for shot in (1, 5):   # proto's figure does not depend on the heads beside it
        np.testing.assert_array_equal(res.accuracy[("proto", shot)], alone.accuracy[("proto", shot)])
        assert 0.2 < res.accuracy[("tangent", shot)].mean() <= 1
        assert not np.array_equal(res.accuracy[("tangent", shot)], res.accuracy[("tangent:k=2", shot)])
    again = evaluate(ckpt, digits, heads="tangent", **kw)
    np.testing.assert_array_equal(again.accuracy[("tangent", 1)], res.accuracy[("tangent", 1)])
    assert "tangent" in res.table()
    with pytest.raises(FewShotError, match="--tta N with N >= 2"):
        evaluate(ckpt, digits, heads="tangent", tta_views=1, **kw)


def test_score_episodes_scores_the_view_features_with_the_directions(digits):  # noqa: F811
    # with no directions the tangent head is nearest neighbour (euclidean) on the view features
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(len(digits), 6, generator=g), dim=-1)
    views = ViewTangents(F.normalize(torch.randn(len(digits), 6, generator=g), dim=-1),
                         torch.zeros(len(digits), 1, 3, 6, dtype=torch.float16))
    eps = EpisodeProtocol(5, (2,), query=3, episodes=25).sample(digits)[0]
    out = score_episodes(feats, eps, [get_head("tangent"), get_head("nn")], tangents=views)
    nn_on_views = score_episodes(views.features, eps, [get_head("nn")])["nn"]
    np.testing.assert_array_equal(out["tangent"], nn_on_views)
    assert not np.array_equal(out["nn"], nn_on_views)
    with pytest.raises(FewShotError, match="needs every image's view directions"):
        score_episodes(feats, eps, [get_head("tangent")])
