"""Validation during training: fixed few-shot episodes on the validation classes, scored by the
run's objective on embeddings from :func:`fewshot.evaluation.features.embed` (plain, and with the
recipe's test-time augmentation)."""

from __future__ import annotations

import math

import torch

from episodes import EpisodeSpec, ImageSet, sample_episodes
from fewshot.errors import FewShotError
from fewshot.evaluation.features import check_finite, default_transform, embed, embed_tensor, transform
from fewshot.evaluation.tta import TTA, tta_from_config
from fewshot.training.config import TrainConfig

__all__ = ["Validation"]


class Validation:
    """``val_episodes`` fixed ``val_way``-way episodes per shot of ``val_shots``, drawn once.

    The query count is ``val_query``, or fewer when even the largest validation class cannot hold
    that many beside the largest shot. :meth:`due` says whether an epoch validates (every
    ``val_every`` epochs and the last) and whether with TTA (``val_tta`` views every
    ``val_tta_every`` epochs, 0: the last only); :meth:`__call__` returns the epoch's row entries.
    Features go through ``eval_transform`` when the config names one (the transform the checkpoint
    records as evaluation's default), so the run's figure is the one ``fewshot eval`` reproduces.
    """

    def __init__(self, cfg: TrainConfig, val: ImageSet, distance: str, channels: int):
        self.cfg, self.val = cfg, val
        largest = int(val.class_counts().max())
        query = min(int(cfg.val_query), largest - max(int(s) for s in cfg.val_shots))
        if query < 1:
            raise FewShotError(f"the largest validation class has {largest} images: too few for "
                               f"{max(cfg.val_shots)}-shot episodes with queries", val.name or None)
        self.sets = {shot: sample_episodes(val, EpisodeSpec(cfg.val_way, shot, query), cfg.val_episodes,
                                           seed=cfg.seed, within_group=cfg.val_within_group, drop_small=True)
                     for shot in cfg.val_shots}
        # the run's own views (the checkpoint records evaluation's, eval_tta where the recipe sets it)
        self.tta: TTA = tta_from_config(cfg.to_dict(), channels, distance, validation=True)
        # the features' transform: the recorded one; with TTA symmetries evaluation's default for the
        # distance too, since their blocks are transformed one by one (the cosine of the whole
        # concatenation would weigh the blocks by their norms)
        self.transform = cfg.eval_transform or (default_transform(distance) if self.tta.symmetries > 1
                                                 else None)
        self._framed: torch.Tensor | None = None

    def _inputs(self, preprocess) -> tuple[torch.Tensor, object]:
        """The validation images and the preprocessing to embed them with. An encoder that frames
        its input (``preprocess.frame``) gets the images framed once, as floats in [0, 1]: the very
        pixels evaluation's framing gives (each image is framed on its own), without redoing it at
        every validation."""
        if getattr(preprocess, "frame", None) is None:
            return self.val.images, preprocess
        if self._framed is None:
            self._framed = preprocess.prepare(self.val.images, uint8=False)
        return self._framed, preprocess.prepared()

    def _embed(self, model, preprocess, device, tta: TTA | None = None) -> torch.Tensor:
        images, prep = self._inputs(preprocess)
        feats = embed_tensor(model, images, prep, device=device, batch_size=512, tta=tta)
        check_finite(feats, self.val.name or None)
        return feats

    def check_transform(self, model: torch.nn.Module, preprocess, device: torch.device) -> None:
        """Apply ``eval_transform`` to a few validation embeddings of ``model`` before training, so a
        transform the encoder's features cannot take (``pt`` on a LeakyReLU or linear output) is a
        one-line error now, not after the first epoch."""
        if self.cfg.eval_transform is None:
            return
        feats = embed(model, self.val.images[:8], preprocess, device=device, progress=False)
        try:
            transform(feats, self.cfg.eval_transform)
        except FewShotError as exc:
            raise FewShotError(f"eval-transform {self.cfg.eval_transform} does not fit encoder "
                               f"{self.cfg.encoder}: {exc}") from None

    def due(self, epoch: int) -> tuple[bool, bool]:
        """``(validate, with_tta)`` after 0-based ``epoch``."""
        cfg, n = self.cfg, epoch + 1
        last = n == cfg.epochs
        tta_now = cfg.val_tta_every > 0 and n % cfg.val_tta_every == 0
        return n % cfg.val_every == 0 or last, last or tta_now

    def __call__(self, model: torch.nn.Module, preprocess, device: torch.device, objective,
                 with_tta: bool) -> dict:
        """Episode accuracy and its 95% CI per shot (``val_5w1s``, ``val_5w1s_ci95``). With TTA the
        plain figure is always kept (``..._plain``) and the TTA figure, the run's ``val_accuracy``,
        only when ``with_tta``."""
        cfg = self.cfg
        plain = self._embed(model, preprocess, device)
        views = {"": plain.to(device)}
        if not self.tta.plain:
            views = {"_plain": views[""]}
            if with_tta:
                views[""] = self._embed(model, preprocess, device, self.tta).to(device)
        if self.transform is not None:   # the TTA figure's symmetries are blocks of its features
            views = {k: transform(v, self.transform, blocks=self.tta.symmetries if k == "" and
                                  not self.tta.plain else 1) for k, v in views.items()}
        out = {}
        for shot, eps in self.sets.items():
            for suffix, feats in views.items():
                acc = objective.score(feats, eps)
                out[f"val_{cfg.val_way}w{shot}s{suffix}"] = float(acc.mean())
                out[f"val_{cfg.val_way}w{shot}s{suffix}_ci95"] = float(1.96 * acc.std() / math.sqrt(len(acc)))
        key = f"val_{cfg.val_way}w{cfg.val_shots[0]}s"
        if key in out:
            out["val_accuracy"] = out[key]
        return out
