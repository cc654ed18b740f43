"""Episodic training: a few-shot head used as a differentiable layer on sampled episodes.

``mode="episodic"`` of ``fewshot ablate`` and the alternative to metric training: each step draws
N-way K-shot episodes from the base classes with :func:`episodes.sample_episodes`, embeds support
and query images with the encoder, fits a head on the support embeddings *inside the graph* and
takes the cross-entropy of the query logits. With the ``proto`` head this is Prototypical
Networks (Snell et al. 2017); with the ``ls`` head (closed-form ridge regression) it is R2-D2
(Bertinetto et al. 2019). A learnable logit scale (and, for ``ls``, a learnable bias) is trained
with the encoder, as both papers do.

The encoder, augmentation, preprocessing and checkpoint format are TRAIN's, so the checkpoint is
evaluated, adapted and compared exactly like a metric-trained one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeSpec, ImageSet, sample_episodes
from fewshot.errors import FewShotError
from fewshot.models.checkpoint import save_checkpoint, state_hash
from fewshot.models.encoders import build_encoder, encoder_spec
from fewshot.models.preprocess import Preprocess
from fewshot.options import from_options
from fewshot.progress import progress as progress_bar
from fewshot.training.augment import Augment
from fewshot.training.trainer import resolve_device

__all__ = ["EPISODIC_HEADS", "EpisodicConfig", "EpisodicResult", "EpisodicHead", "train_episodic"]

EPISODIC_HEADS = ("proto", "ls")


@dataclass
class EpisodicConfig:
    """Every setting of an episodic training run (the ``[train]`` table of an ablation cell).

    Attributes:
        encoder: encoder name (``conv4``, ``resnet12``, ...), as in
            :func:`fewshot.models.encoders.build_encoder`.
        encoder_kwargs: extra encoder options (e.g. ``{"pool": "avg"}``).
        embedding_dim: optional linear projection of the backbone feature.
        head: ``"proto"`` (ProtoNet) or ``"ls"`` (R2-D2: ridge regression solved in closed form).
        distance: the head's distance for ``proto`` (and the default the checkpoint records).
        ridge_lambda: fixed ridge penalty of the ``ls`` head during training (R2-D2 learns a scale instead).
        way, shot, query: the training episodes (ProtoNet trains with more ways than it tests).
        episodes_per_step: episodes batched into one optimiser step.
        steps_per_epoch, epochs: length of training.
        lr, weight_decay, optimizer: Adam (default) or SGD with momentum 0.9, cosine schedule.
        augment: options of :class:`fewshot.training.augment.Augment` (``{"mode": "none"}`` disables it).
        image_size, channels: network input; ``None`` keeps the data's.
        val_fraction: share of the base classes held out for validation when no ``val`` set is given
            (the same seeded split as TRAIN's ``train``; 0 trains on all classes, keeps the last epoch).
        seed, device: reproducibility and placement (``auto``: CUDA when available, else CPU).
    """

    encoder: str = "conv4"
    encoder_kwargs: dict = field(default_factory=dict)
    embedding_dim: int | None = None
    head: str = "proto"
    distance: str = "euclidean"
    ridge_lambda: float = 1.0
    way: int = 10
    shot: int = 5
    query: int = 5
    episodes_per_step: int = 2
    steps_per_epoch: int = 50
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    augment: dict = field(default_factory=lambda: {"mode": "affine", "degrees": 10.0})
    image_size: int | None = None
    channels: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.head not in EPISODIC_HEADS:
            raise FewShotError(f"episodic training head must be one of {', '.join(EPISODIC_HEADS)}, "
                               f"got {self.head!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise FewShotError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        for name in ("way", "shot", "query", "episodes_per_step", "steps_per_epoch", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FewShotError(f"episodic {name} must be a positive integer, got {value!r}")
        if self.lr <= 0:
            raise FewShotError(f"learning rate must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict) -> EpisodicConfig:
        return from_options(cls, d, "episodic training")

    def to_dict(self) -> dict:
        return asdict(self)


class EpisodicHead(nn.Module):
    """A head as a differentiable layer with a learnable logit scale (and bias for ``ls``).

    ``forward(support [E,S,D], support_y [E,S], query [E,Q,D], way) -> logits [E,Q,way]``.
    The head itself comes from :mod:`fewshot.heads` (the same code that scores evaluation
    episodes), so training and testing use one definition of the classifier.
    """

    def __init__(self, head: str = "proto", distance: str = "euclidean", ridge_lambda: float = 1.0,
                 init_scale: float | None = None):
        super().__init__()
        from fewshot.heads import get_head

        self.kind = head
        if head == "proto":
            self.head = get_head("proto", distance=distance)
            init_scale = init_scale if init_scale is not None else (10.0 if distance == "cosine" else 1.0)
        else:
            self.head = _ridge_head(ridge_lambda)
            init_scale = init_scale if init_scale is not None else 1.0
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(())) if head == "ls" else None

    def forward(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        logits = self.head.fit(support, support_y, way)(query)
        logits = logits * self.log_scale.exp()
        if self.bias is not None:
            logits = logits + self.bias
        return logits


def _ridge_head(lam: float):
    """EVAL's ``ls`` head at a fixed ridge penalty (R2-D2 trains through the closed form)."""
    from fewshot.heads import get_head

    return get_head("ls", lam=float(lam))


@dataclass
class EpisodicResult:
    """What :func:`train_episodic` produced (the same fields as TRAIN's ``TrainResult``)."""

    best_path: Path
    last_path: Path
    metrics: list[dict]
    val_accuracy: float | None
    seconds: float = 0.0
    held_out_classes: list | None = None


def _episode_batches(data: ImageSet, spec: EpisodeSpec, count: int, seed: int):
    return sample_episodes(data, spec, count, seed=seed, drop_small=True)


def train_episodic(config: EpisodicConfig | dict, data: ImageSet, val: ImageSet | None, out_dir,
                   *, progress: bool = True, callbacks: Sequence = ()) -> EpisodicResult:
    """Train an encoder episodically on ``data`` (base classes); checkpoints in ``out_dir``.

    ``val`` (class-disjoint from ``data``; without it a seeded ``val_fraction`` of the base classes is
    held out, as TRAIN does) is scored each epoch on fixed 5-way ``shot``-shot episodes with the
    training head; the best epoch is kept as ``best.pt``. ``callbacks``: as TRAIN's
    (``on_epoch_end(row, metrics, out_dir)`` after every epoch, e.g.
    :class:`fewshot.training.monitor.CurveWriter`).
    Same seed, same result (on CPU).
    """
    cfg = config if isinstance(config, EpisodicConfig) else EpisodicConfig.from_dict(dict(config))
    held_out = None
    if val is None and cfg.val_fraction > 0:
        data, val = data.split_classes(cfg.val_fraction, seed=cfg.seed)
        held_out = list(val.class_names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    channels = cfg.channels or data.channels
    size = cfg.image_size or data.image_size[0]
    preprocess = Preprocess.fit(data.images, image_size=size, channels=channels)
    if cfg.way > data.num_classes:
        raise FewShotError(f"episodic training asks for {cfg.way}-way episodes but the training set "
                           f"has {data.num_classes} classes", data.name or None)
    enc_kwargs = dict(cfg.encoder_kwargs)
    if cfg.encoder == "conv4":
        enc_kwargs.setdefault("image_size", preprocess.image_size[0])
    model = build_encoder(cfg.encoder, in_channels=channels, num_classes=data.num_classes,
                          embedding_dim=cfg.embedding_dim, **enc_kwargs).to(device)
    head = EpisodicHead(cfg.head, cfg.distance, cfg.ridge_lambda).to(device)
    params = list(model.parameters()) + list(head.parameters())
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    augment = Augment.from_dict(cfg.augment)
    gen = torch.Generator().manual_seed(cfg.seed)
    spec = EpisodeSpec(cfg.way, cfg.shot, cfg.query)
    val_eps = None
    if val is not None:   # 5-way episodes, up to 15 queries per class (fewer if the classes are small)
        val_query = min(15, int(val.class_counts().max()) - cfg.shot)
        if val_query >= 1 and val.num_classes >= 2:
            val_eps = sample_episodes(val, EpisodeSpec(min(5, val.num_classes), cfg.shot, val_query), 300,
                                      seed=cfg.seed + 7919, drop_small=True)

    def forward_episodes(eps) -> tuple[torch.Tensor, torch.Tensor]:
        s, sy, q, qy = eps.gather(data.images)                         # uint8 [E,S,C,H,W] ...
        e, ns, nq = s.shape[0], s.shape[1], q.shape[1]
        x = torch.cat([s.reshape(e * ns, *s.shape[2:]), q.reshape(e * nq, *q.shape[2:])]).to(device)
        x = preprocess.to_unit(x)
        if augment.geometric:
            x = augment(x, gen)
        emb, _ = model(preprocess.normalize(x))
        emb_s = emb[: e * ns].view(e, ns, -1)
        emb_q = emb[e * ns:].view(e, nq, -1)
        logits = head(emb_s, sy.to(device), emb_q, eps.spec.way)
        return logits, qy.to(device)

    metrics: list[dict] = []
    best_acc, best_state = -1.0, None
    start = time.perf_counter()
    bar = progress_bar(total=total, desc=f"episodic {cfg.head}", unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        head.train()
        eps = _episode_batches(data, spec, cfg.steps_per_epoch * cfg.episodes_per_step,
                               seed=cfg.seed * 100003 + epoch)
        losses, accs = [], []
        for step in range(cfg.steps_per_epoch):
            batch = eps[step * cfg.episodes_per_step:(step + 1) * cfg.episodes_per_step]
            logits, qy = forward_episodes(batch)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), qy.reshape(-1))
            if not torch.isfinite(loss):
                raise FewShotError(f"episodic training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                                   "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            accs.append((logits.argmax(-1) == qy).float().mean().item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accs)),
                  "first_loss": float(losses[0]), "last_loss": float(np.mean(losses[-5:])),
                  "lr": float(opt.param_groups[0]["lr"])}
        if val_eps is not None:
            acc = _val_accuracy(model, head, val, val_eps, preprocess, device)
            record["val_accuracy"] = float(acc.mean())
            record["val_accuracy_ci95"] = float(1.96 * acc.std() / math.sqrt(len(acc)))
        metrics.append(record)
        for callback in callbacks:
            callback.on_epoch_end(record, metrics, out)
        score = record.get("val_accuracy", epoch)   # no validation: the last epoch is the best
        if score >= best_acc:
            best_acc = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar.close()
    seconds = time.perf_counter() - start

    base_mean = _base_mean(model, data, preprocess, device)
    extra = {"mode": "episodic", "episodic": cfg.to_dict(), "metrics": metrics,
             "logit_scale": float(head.log_scale.detach().exp())}
    last_val = metrics[-1].get("val_accuracy")
    last_path = _save(out / "last.pt", model, preprocess, data, cfg, base_mean, extra, cfg.epochs, last_val)
    best_epoch, val_acc = cfg.epochs, last_val
    if val_eps is not None:
        best_epoch = max(range(len(metrics)), key=lambda i: (metrics[i]["val_accuracy"], i)) + 1
        val_acc = metrics[best_epoch - 1]["val_accuracy"]
        if best_epoch != cfg.epochs:
            model.load_state_dict(best_state)
            base_mean = _base_mean(model, data, preprocess, device)
    best_path = _save(out / "best.pt", model, preprocess, data, cfg, base_mean, extra, best_epoch, val_acc)
    return EpisodicResult(best_path, last_path, metrics, val_acc, seconds, held_out)


def _embed(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, device) -> torch.Tensor:
    """Embeddings on ``device`` through the toolkit's one embedding path
    (:func:`fewshot.evaluation.features.embed`)."""
    from fewshot.evaluation.features import embed

    return embed(model, images, preprocess, device=device, progress=False).to(device)


@torch.no_grad()
def _val_accuracy(model: nn.Module, head: EpisodicHead, val: ImageSet, eps, preprocess: Preprocess,
                  device) -> torch.Tensor:
    """Per-episode accuracy ``[E]`` of the training head on fixed validation episodes (val images
    embedded once)."""
    model.eval()
    head.eval()
    s, sy, q, qy = eps.gather(_embed(model, val.images, preprocess, device))
    logits = head(s, sy, q, eps.spec.way)
    model.train()
    head.train()
    return (logits.argmax(-1) == qy).float().mean(1).cpu()


@torch.no_grad()
def _base_mean(model: nn.Module, data: ImageSet, preprocess: Preprocess, device) -> torch.Tensor:
    """Mean embedding of the base images (for the ``cl2n`` transform), on at most ~2,000 of them."""
    model.eval()
    step = max(1, len(data) // 2000)
    return _embed(model, data.images[::step], preprocess, device).mean(0).cpu()


def _save(path: Path, model: nn.Module, preprocess: Preprocess, data: ImageSet, cfg: EpisodicConfig,
          base_mean: torch.Tensor, extra: dict, epoch: int, val_accuracy: float | None) -> Path:
    """A checkpoint in TRAIN's format, so ``load_encoder`` / ``evaluate`` read it unchanged."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"encoder": encoder_spec(model), "model": state, "hash": state_hash(state),
           "preprocess": preprocess.to_dict(),
           "distance": cfg.distance if cfg.head == "proto" else "euclidean",
           "base_classes": list(data.class_names), "base_mean": base_mean.float(),
           "config": extra, "epoch": epoch, "val_accuracy": val_accuracy}
    return save_checkpoint(path, obj)
