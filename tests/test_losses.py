import pytest
import torch
from pytorch_metric_learning import distances, losses

from fewshot.errors import FewShotError
from fewshot.models.losses import LOSSES, MINERS, PROXY_LOSSES, build_loss, build_miner, parse_loss_args


def _batch():
    torch.manual_seed(0)
    return torch.randn(16, 8, requires_grad=True), torch.arange(4).repeat_interleave(4)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_with_every_miner_backprops(name):
    loss = build_loss(name, num_classes=4, embedding_dim=8)
    emb, y = _batch()
    for miner_name in MINERS:
        miner = build_miner(miner_name)
        tuples = miner(emb, y) if miner is not None and name not in PROXY_LOSSES else None
        value = loss(emb, y, tuples)
        assert torch.isfinite(value)
        value.backward()
    assert emb.grad is not None
    assert (len(list(loss.parameters())) > 0) == (name in PROXY_LOSSES)


def test_loss_args_and_distance_reach_pml_objects():
    args = parse_loss_args(["margin=0.3", "swap=true", "type_of_triplets=all"])
    assert args == {"margin": 0.3, "swap": True, "type_of_triplets": "all"}
    assert parse_loss_args(["width=64,96", "scale=0.8,1.2", "weights=a,b.pt"]) == {
        "width": [64, 96], "scale": [0.8, 1.2], "weights": "a,b.pt"}
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
    with pytest.raises(FewShotError, match="circle, contrastive"):
        build_loss("hinge")
    with pytest.raises(FewShotError, match="batch-hard"):
        build_miner("random")
    with pytest.raises(FewShotError, match="bad arguments for loss circle"):
        build_loss("circle", bogus=1)
    with pytest.raises(FewShotError, match="key=value"):
        parse_loss_args(["m"])
    with pytest.raises(FewShotError, match="cosine"):
        build_loss("arcface", distance="euclidean", num_classes=3, embedding_dim=4)
