"""proto-dc: prototypes calibrated toward the nearest base-class means, the base-class means a
training run records, and how the evaluation hands them to the head."""

from __future__ import annotations

import pytest
import torch
from _train_data import digits_set, one_thread, tiny_config  # noqa: F401 (an autouse fixture)

from episodes.protocols import EpisodeProtocol
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import evaluate
from fewshot.evaluation.features import class_means, embed, transform
from fewshot.heads import ProtoHead, get_head
from fewshot.models.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from fewshot.training.trainer import train


def _head(**kw):
    return get_head("proto-dc", **kw)


def test_hand_checked_prototypes_shrink_toward_the_nearest_base_means():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    head = _head(k=1, lam=4.0).with_base_means(base)
    support = torch.tensor([[[0.6, 0.4], [0.4, 0.6]]])           # class 0 near base 0, class 1 near base 1
    fitted = head.fit(support, torch.tensor([[0, 1]]), 2)
    expected = torch.tensor([[[0.6 + 4.0, 0.4], [0.4, 0.6 + 4.0]]]) / 5.0
    assert torch.allclose(fitted.prototypes, expected)
    # two shots of one class: their sum plus lam times the mean of their two anchors, over 2 + lam
    two = head.fit(torch.tensor([[[0.6, 0.4], [-0.7, 0.1]]]), torch.tensor([[0, 0]]), 2)
    anchor = (base[0] + base[2]) / 2
    assert torch.allclose(two.prototypes[0, 0], (torch.tensor([-0.1, 0.5]) + 4.0 * anchor) / 6.0)
    assert torch.equal(two.prototypes[0, 1], torch.zeros(2))   # a class without shots stays empty
    # k = 2: the anchor is the mean of the two nearest base means
    assert torch.allclose(_head(k=2, lam=1.0).with_base_means(base).anchors(torch.tensor([[[0.6, 0.4]]])),
                          ((base[0] + base[1]) / 2).view(1, 1, 2))


def test_a_query_between_classes_goes_to_the_base_side_of_its_shot():
    # The query is nearer class 0's shot, but it lies toward base cluster (0, 2), the anchor of
    # class 1's shot, while class 0's shot is nearest base cluster (2, 0): calibrated, it goes to class 1.
    base = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    support = torch.tensor([[[0.9, 0.8], [0.0, 1.0]]])
    labels = torch.tensor([[0, 1]])
    query = torch.tensor([[[0.5, 0.9]]])
    plain = ProtoHead().fit(support, labels, 2)(query).argmax(-1)
    calibrated = _head(k=1, lam=4.0).with_base_means(base).fit(support, labels, 2)(query).argmax(-1)
    assert int(plain) == 0 and int(calibrated) == 1  # class 1's anchor (0, 2) pulls the query over


def test_lam_zero_is_proto_exactly():
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(3, 10, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    labels = torch.arange(5).repeat(2).expand(3, -1)
    head = _head(lam=0.0, distance="cosine").with_base_means(torch.randn(7, 8, generator=g))
    plain = ProtoHead(distance="cosine").fit(support, labels, 5)(query)
    assert torch.equal(head.fit(support, labels, 5)(query), plain)


@pytest.mark.parametrize("make, message", [
    (lambda: _head().fit(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), 2), "no base-class means"),
    (lambda: _head().with_base_means(torch.zeros(4, 5)).fit(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), 2),
     "base-class means have dim 5, the features 3"),
    (lambda: _head().with_base_means(torch.zeros(5)), r"needs base-class means \[C, D\]"),
    (lambda: get_head("proto-dc:lam=-1"), "lam=-1.0: must be a finite number >= 0"),
    (lambda: get_head("proto-dc:k=0"), "k=0: must be an integer >= 1"),
])
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(FewShotError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_class_means_per_transform():
    feats = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    means = class_means(feats, torch.tensor([0, 0, 1]))
    assert torch.allclose(means["none"], torch.tensor([[2.0, 2.0], [0.0, 2.0]]))
    assert torch.allclose(means["l2"], torch.tensor([[0.8, 0.4], [0.0, 1.0]]))


def test_training_records_base_class_means_and_eval_uses_them(tmp_path):
    data, val = digits_set(per_class=8).split_classes(0.3, seed=0)
    res = train(tiny_config(epochs=1), data, val, tmp_path / "run", progress=False)
    model, info = load_encoder(res.best_path)
    means = info["base_class_means"]
    assert set(means) == {"none", "l2"} and means["l2"].shape == (data.num_classes, model.embedding_dim)
    feats = embed(model, data, info["preprocess"], device="cpu", progress=False)
    for kind in ("none", "l2"):   # the class means of the base images under each transform
        f = transform(feats, kind)
        want = torch.stack([f[data.labels == c].mean(0) for c in range(data.num_classes)])
        assert torch.allclose(means[kind], want, atol=1e-5)

    protocol = EpisodeProtocol(way=3, shots=(1, 2), query=2, episodes=12, seed=0)
    result = evaluate(res.best_path, val, heads="proto,proto-dc,proto-dc:lam=0", episodes=protocol,
                      progress=False, retrieval=False)
    for shot in (1, 2):   # lam = 0 is proto, episode by episode
        assert (result.accuracy[("proto-dc:lam=0", shot)] == result.accuracy[("proto", shot)]).all()
    assert {r["head"] for r in result.results()} == {"proto", "proto-dc", "proto-dc:lam=0"}
    mine = get_head("proto-dc", distance="cosine")   # a head object of the caller's: used, not changed
    again = evaluate(res.best_path, val, heads=[mine], episodes=protocol, progress=False, retrieval=False)
    assert mine.base_means is None
    assert (again.accuracy[("proto-dc", 1)] == result.accuracy[("proto-dc", 1)]).all()

    with pytest.raises(FewShotError, match=r"transform .cl2n.*for l2, none \(use --transform l2\)"):
        evaluate(res.best_path, val, heads="proto-dc", episodes=protocol, transform="cl2n", progress=False)
    # a checkpoint written before the means were recorded: a one-line error that says how to add them
    old = load_checkpoint(res.best_path)
    old.pop("base_class_means")
    save_checkpoint(tmp_path / "old.pt", old)
    with pytest.raises(FewShotError, match=r"does not record.*--resume") as err:
        evaluate(tmp_path / "old.pt", val, heads="proto,proto-dc", episodes=protocol, progress=False)
    assert "\n" not in str(err.value)
    evaluate(tmp_path / "old.pt", val, heads="proto", episodes=protocol, progress=False, retrieval=False)


def test_resuming_a_finished_run_adds_the_means_to_an_older_checkpoint(tmp_path):
    data, val = digits_set(per_class=8).split_classes(0.3, seed=0)
    run = tmp_path / "run"
    train(tiny_config(epochs=1), data, val, run, progress=False)
    recorded = load_checkpoint(run / "best.pt")["base_class_means"]
    for name in ("best.pt", "last.pt"):   # as an older version wrote them
        ckpt = load_checkpoint(run / name)
        ckpt.pop("base_class_means")
        save_checkpoint(run / name, ckpt)
    train(tiny_config(epochs=1, resume="auto"), data, val, run, progress=False)
    again = load_checkpoint(run / "best.pt")["base_class_means"]
    assert all(torch.allclose(again[k], recorded[k]) for k in recorded)
