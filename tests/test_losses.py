import pytest
import torch
from pytorch_metric_learning import distances, losses, miners

from fewshot.errors import FewShotError
from fewshot.models.losses import LOSSES, MINERS, build_distance, build_loss, build_miner, is_proxy_loss


def _batch():
    torch.manual_seed(0)
    return torch.randn(16, 8, requires_grad=True), torch.arange(4).repeat_interleave(4)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_with_every_miner_backprops(name):
    loss = build_loss(name, num_classes=4, embedding_dim=8)
    emb, y = _batch()
    for miner_name in MINERS:
        miner = build_miner(miner_name)
        tuples = miner(emb, y) if miner is not None and not is_proxy_loss(name) else None
        value = loss(emb, y, tuples)
        assert torch.isfinite(value)
        value.backward()
    assert emb.grad is not None
    assert (len(list(loss.parameters())) > 0) == is_proxy_loss(name) == (name in ("arcface", "proxyanchor"))


def test_loss_args_and_distance_reach_pml_objects():
    # PML keywords are un-annotated: texts read as literals (numbers, booleans, lists, none)
    _, args = LOSSES.options("triplet", margin="0.3", swap="true", triplets_per_anchor="all")
    assert args == {"margin": 0.3, "swap": True, "triplets_per_anchor": "all"}
    assert LOSSES.options("circle:m=0.25,gamma=64")[1] == {"m": 0.25, "gamma": 64}
    loss = build_loss("triplet:swap=true", distance="euclidean", margin="0.3")
    assert loss.margin == 0.3 and loss.swap is True
    loss = build_loss("triplet", distance="euclidean", **{"margin": 0.3})
    assert loss.margin == 0.3 and isinstance(loss.distance, distances.LpDistance)
    miner = build_miner("triplet-semihard", distance="euclidean")
    assert miner.type_of_triplets == "semihard" and isinstance(miner.distance, distances.LpDistance)
    assert isinstance(build_loss("circle", m=0.25).distance, distances.CosineSimilarity)
    assert build_loss("circle", m=0.25).m == 0.25


def test_objects_pass_through_and_errors_list_names():
    obj = losses.NTXentLoss(temperature=0.1)
    assert build_loss(obj) is obj
    assert build_miner("none") is None
    miner = miners.BatchHardMiner()
    assert build_miner(miner) is miner
    with pytest.raises(FewShotError, match="unknown loss 'hinge'; choose one of circle, contrastive"):
        build_loss("hinge")
    with pytest.raises(FewShotError, match="unknown miner 'random'; choose one of .*batch-hard"):
        build_miner("random")
    with pytest.raises(FewShotError, match=r"bad options for loss 'circle'.*bogus.*valid: m = 0.4, gamma"):
        build_loss("circle", bogus=1)
    with pytest.raises(FewShotError, match="key=value"):
        build_loss("circle:m")
    with pytest.raises(FewShotError, match="cosine"):
        build_loss("arcface", distance="euclidean", num_classes=3, embedding_dim=4)
    dist = distances.DotProductSimilarity()
    assert build_distance(dist) is dist and isinstance(build_distance("cosine"), distances.CosineSimilarity)
    with pytest.raises(FewShotError, match="unknown distance 'manhattan'; choose one of cosine, euclidean"):
        build_distance("manhattan")
