"""The mperclass-group sampler: every batch m images of batch/m classes of one group, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_data import digits_set, one_thread, tiny_config  # noqa: F401 (an autouse fixture)

from episodes import ImageSet
from fewshot.errors import FewShotError
from fewshot.training.config import check_data
from fewshot.training.objectives import MetricBatches
from fewshot.training.trainer import train


def _grouped(counts, groups):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    return ImageSet(images, labels, [f"c{c}" for c in range(len(counts))],
                    [str(i) for i in range(len(labels))], groups=groups, name="grouped")


def test_batches_hold_m_images_of_classes_of_one_group():
    # group a: 4 classes, group b: 5 classes, group c: 1 class (too few for a batch: never drawn)
    counts = [6, 6, 6, 6, 3, 8, 8, 8, 8, 20]
    groups = ["a"] * 4 + ["b"] * 5 + ["c"]
    data = _grouped(counts, groups)
    batches = MetricBatches(data.labels, "mperclass-group", 2, 8, seed=0, groups=groups)
    assert len(batches) == len(data) // 8
    epoch = batches.epoch(0)
    seen = set()
    for step in range(len(batches)):
        idx, y = epoch.batch(step, 0, 1)
        assert torch.equal(data.labels[idx], y)
        classes, per = torch.unique(y, return_counts=True)
        assert len(classes) == 4 and (per == 2).all()                # batch/m classes, m images each
        assert len({groups[int(c)] for c in classes}) == 1           # all of one group
        assert "c" not in {groups[int(c)] for c in classes}
        for c in classes:   # without replacement where the class has >= m images
            members = idx[y == c]
            assert len(set(members.tolist())) == 2
        seen |= {groups[int(c)] for c in classes}
    assert seen == {"a", "b"}
    again = MetricBatches(data.labels, "mperclass-group", 2, 8, seed=0, groups=groups)
    assert torch.equal(again.epoch(0).index, epoch.index)             # same seed, same batches
    assert not torch.equal(batches.epoch(1).index, epoch.index)       # another epoch, other batches
    assert not torch.equal(MetricBatches(data.labels, "mperclass-group", 2, 8, seed=1,
                                         groups=groups).epoch(0).index, epoch.index)


def test_group_sampler_trains_and_refuses_data_it_cannot_serve(tmp_path):
    data, val = digits_set(per_class=8).split_classes(0.3, seed=0)   # groups even / odd digits
    res = train(tiny_config(epochs=1, batch_size=8, m=2, sampler="mperclass-group"), data, val,
                tmp_path / "run", progress=False)
    assert np.isfinite(res.metrics[-1]["loss"])
    cfg = tiny_config(sampler="mperclass-group", batch_size=12, m=2)   # 6 classes; 5 odd, 2 even here
    with pytest.raises(FewShotError, match="draws 6 classes of one group per batch; the largest group has 5"):
        check_data(cfg, data, 1)
    plain = ImageSet(data.images, data.labels, data.class_names, data.ids, name="plain")
    with pytest.raises(FewShotError, match="needs class groups .*plain has none"):
        check_data(tiny_config(sampler="mperclass-group", batch_size=8, m=2), plain, 1)
