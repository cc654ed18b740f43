"""The one training loop of the toolkit, for every objective.

:class:`Trainer` owns what every run shares: the device and torchrun / DistributedDataParallel
set-up, the batch schedule (warm-up + cosine), bf16 autocast on CUDA, the finite guard and Ctrl-C
deferral (:mod:`fewshot.training.faults`), resume, validation on fixed episodes (with the recipe's
test-time augmentation), the checkpoints ``best.pt`` / ``last.pt`` written in the order
:mod:`fewshot.training.runstate` gives under the run folder's lock, and callbacks. What is
minimised, and on which batches, is the objective's (:mod:`fewshot.training.objectives`): metric
loss + cross-entropy on M-per-class batches, or ProtoNet / R2-D2 on sampled episodes.

Images are gathered by indexing the uint8 ``ImageSet`` held in memory (on the GPU when it fits)
and augmented there as batched tensor ops (:mod:`fewshot.training.augment`). ``last.pt`` holds the
whole state (model, optimizer, scheduler, objective, batch position, RNGs), so a resume continues
bit-exactly on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from episodes import ImageSet
from episodes.atomic import atomic_write_text
from fewshot.device import autocast_dtype, native_bf16, pick_device
from fewshot.errors import FewShotError
from fewshot.evaluation.features import class_means, embed
from fewshot.evaluation.tta import tta_from_config
from fewshot.finite import all_finite, nonfinite_names
from fewshot.models.checkpoint import load_checkpoint, save_checkpoint, state_hash
from fewshot.models.encoders import INIT_ONLY, build_encoder, check_input_size, encoder_spec
from fewshot.models.preprocess import Preprocess
from fewshot.seeds import derive_seed
from fewshot.training.augment import Augment
from fewshot.training.config import TrainConfig, TrainResult, check_config, check_data, world_size
from fewshot.training.data import check_validation, load_training_data, load_validation, prepare_sets
from fewshot.training.episodic import EpisodicObjective
from fewshot.training.faults import DeferredInterrupt, StepSnapshot
from fewshot.training.faults import save_interrupted as save_interrupted_state
from fewshot.training.objectives import MetricObjective, Objective
from fewshot.training.runlock import RunLock
from fewshot.training.runstate import commit_epoch, reconcile, resume_point, write_metrics
from fewshot.training.validation import Validation

__all__ = ["Trainer", "train", "build_objective"]


def train(config: TrainConfig, data: ImageSet | None = None, val: ImageSet | None = None,
          out_dir: str | os.PathLike | None = None, *, progress: bool = True,
          loss: torch.nn.Module | None = None, miner: torch.nn.Module | None = None,
          encoder: torch.nn.Module | None = None, callbacks: list | tuple = ()) -> TrainResult:
    """Train an encoder on ``data`` (the base classes), validate on ``val``, write the run to ``out_dir``.

    ``data`` None: the set ``config.data`` names (its training split). ``val`` None: the set
    ``config.val`` names (a recipe's validation data), else a seeded ``val_fraction`` of the base
    classes held out (``TrainResult.held_out_classes``; 0: no validation, the last epoch is the
    best). ``out_dir`` None: ``config.out``, else a new temporary folder, which
    ``TrainResult.out_dir`` names (nothing is written to the current folder). ``loss`` / ``miner``
    / ``encoder`` accept objects (any PML loss or miner, any backbone module) in place of the
    names in ``config``. ``callbacks``: see :mod:`fewshot.training.monitor`; ``progress`` adds
    :class:`~fewshot.training.monitor.ProgressPrinter` (bars, one line per epoch, notes on stderr).
    """
    if progress:
        from fewshot.training.monitor import ProgressPrinter
        callbacks = [ProgressPrinter(), *callbacks]
    trainer = Trainer(config, loss=loss, miner=miner, encoder=encoder, callbacks=callbacks)
    return trainer.fit(data, val, out_dir)


def build_objective(cfg, num_classes: int, embedding_dim: int, *, loss=None, miner=None,
                    distributed: bool = False) -> Objective:
    """The objective ``cfg.objective`` names: ``metric`` (default), ``protonet`` or ``r2d2``."""
    if cfg.objective == "metric":
        return MetricObjective(cfg, num_classes, embedding_dim, loss=loss, miner=miner,
                               distributed=distributed)
    return EpisodicObjective(cfg)


class Trainer:
    """Trains an encoder under one :class:`~fewshot.training.config.TrainConfig`.

    ``Trainer(config, callbacks=[...]).fit(data, val, out_dir) -> TrainResult``. The objective is
    built from ``config.objective`` (``loss`` / ``miner`` objects may replace the metric
    objective's names) unless one is given. Callbacks are objects with any of ``on_message(text)``,
    ``on_epoch_begin(epoch, epochs, steps, first_step)``, ``on_step_end(step, logs)`` and
    ``on_epoch_end(row, metrics, out_dir)``, called on the main process.
    """

    def __init__(self, config: TrainConfig, *, objective: Objective | None = None,
                 loss: torch.nn.Module | None = None, miner: torch.nn.Module | None = None,
                 encoder: torch.nn.Module | None = None, callbacks: list | tuple = ()):
        self.cfg, self.objective = config, objective
        self.loss, self.miner, self.encoder = loss, miner, encoder
        self.callbacks = list(callbacks)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed, self.is_main = self.world > 1, self.rank == 0

    def emit(self, hook: str, *args) -> None:
        """Call ``hook`` on every callback that has it (main process only)."""
        if self.is_main:
            for cb in self.callbacks:
                fn = getattr(cb, hook, None)
                if fn is not None:
                    fn(*args)

    def fit(self, data: ImageSet | None = None, val: ImageSet | None = None,
            out_dir: str | os.PathLike | None = None) -> TrainResult:
        """Run the training; see :func:`train` for what ``data``, ``val`` and ``out_dir`` None mean."""
        check_config(self.cfg, self.world)   # a bad setting fails before any data is loaded
        if data is None:
            data = load_training_data(self.cfg)
        if val is None and self.cfg.val:
            val = load_validation(self.cfg, data)
        out = out_dir if out_dir is not None else self.cfg.out
        if out is None:
            if self.distributed:
                raise FewShotError("a multi-process run needs an output folder (out_dir or TrainConfig.out)")
            out = tempfile.mkdtemp(prefix="fewshot-train-")
        out = Path(out)
        # one writer per run folder: a second run pointed at a live one is refused, not interleaved
        with RunLock(out) if self.is_main else contextlib.nullcontext():
            return self._fit(data, val, out)

    # ------------------------------------------------------------------ set-up
    def _setup(self, data: ImageSet, val: ImageSet | None, out_dir: Path) -> None:
        cfg = self.cfg
        self.device = device = pick_device(cfg.device, self.local_rank)
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.sets = sets = prepare_sets(cfg, data, val, lambda text: self.emit("on_message", text))
        check_data(cfg, sets.data, self.world)
        check_validation(cfg, sets)
        torch.manual_seed(cfg.seed)
        self.amp = autocast_dtype(cfg.precision, device)
        if self.amp is not None and not native_bf16(device):
            self.emit("on_message", "note: precision bf16 on a CPU without AMX or AVX512-BF16 is emulated "
                                    "and slower than fp32 (use --precision fp32)")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        data = sets.data
        # real images only; with framing they are framed already (prepare_sets), so the training
        # steps and the base statistics use ``prepared``, validation frames its full-size images
        self.preprocess = Preprocess.fit(sets.real.images, channels=data.channels, frame=cfg.frame)
        self.train_preprocess = self.preprocess.prepared()
        enc = self.encoder
        self.model = build_encoder(
            enc if enc is not None else cfg.encoder, in_channels=data.channels, num_classes=data.num_classes,
            embedding_dim=cfg.embedding_dim, image_size=data.image_size[0],
            **({} if enc is not None else {  # resuming: the checkpoint has the weights
                k: v for k, v in cfg.encoder_args.items() if not (cfg.resume and k in INIT_ONLY)}),
            **({"download": True} if cfg.download and enc is None and not cfg.resume
               and str(cfg.encoder).startswith("resnet") and cfg.encoder != "resnet12" else {}))
        self.spec = encoder_spec(self.model)
        check_input_size(self.model, data.channels, tuple(data.image_size))
        # channels_last on every device: oneDNN's CPU convolutions prefer NHWC as cuDNN's do
        self.model = self.model.to(device).to(memory_format=torch.channels_last)
        if self.objective is None:
            self.objective = build_objective(cfg, data.num_classes, self.model.embedding_dim, loss=self.loss,
                                             miner=self.miner, distributed=self.distributed)
        obj = self.objective.to(device)
        params = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        obj_params = [p for p in obj.parameters() if p.requires_grad]
        if obj_params:
            params.append({"params": obj_params})
        self.optimizer = _optimizer(cfg, params)
        self.batches = obj.schedule(data, self.world, device)
        self.steps = steps = len(self.batches)
        total, warm = steps * cfg.epochs, int(round(cfg.warmup_epochs * steps))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.augment = Augment.from_dict(cfg.augment)
        self.gen = torch.Generator(device=device)
        self.validation = None if sets.val is None else Validation(cfg, sets.val, obj.distance, data.channels)
        if self.validation is not None:   # a transform the encoder's features cannot take: say so now
            self.validation.check_transform(self.model, self.preprocess, device)
        self.best_path, self.last_path = out_dir / "best.pt", out_dir / "last.pt"
        self.out_dir = out_dir

    def _resume(self) -> None:
        """Load ``cfg.resume`` (``auto``: ``last.pt``): weights, optimizer, scheduler, objective,
        RNGs and the batch position; ``metrics.jsonl`` and ``best.pt`` are made to agree with it."""
        cfg, device = self.cfg, self.device
        self.start, self.best, self.metrics, self.run_sums, self.saved = (0, 0), None, [], None, None
        self.resume_gen_state = None
        if not cfg.resume:
            return
        rpath = self.last_path if cfg.resume in ("auto", "true", "True", True) else Path(cfg.resume)
        ckpt = resume_point(rpath, self.spec, self.sets.data.fingerprint, cfg.objective)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("loss_state"):
            self.objective.restore_state(ckpt["loss_state"])
        self.start = (int(ckpt["sampler"]["epoch"]), int(ckpt["sampler"]["step"]))
        self.best = ckpt.get("best")
        if self.best is None and float(ckpt.get("best_accuracy", -1.0)) >= 0:  # written by an older version
            self.best = {"epoch": None, "accuracy": float(ckpt["best_accuracy"]), "hash": None}
        self.run_sums = ckpt.get("running")
        if self.run_sums is not None and "scored" not in self.run_sums:  # written by an older version
            self.run_sums["scored"] = self.run_sums["seen"] // self.world
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        gen_state = ckpt["rng"]["augment"]
        self.gen.set_state(gen_state.to("cpu") if device.type == "cpu" else gen_state)
        self.resume_gen_state = self.gen.get_state()
        # The checkpoint is the commit point: metrics.jsonl and best.pt are made to agree with it.
        self.metrics = reconcile(self.out_dir, ckpt) if self.is_main else list(ckpt.get("metrics") or [])
        self.saved = (rpath, *self.start)

    def _write_start(self) -> None:
        """``config.json`` (settings and what they resolved to) and, for a fresh run, an empty
        ``metrics.jsonl`` with no checkpoint of an earlier run left beside it."""
        if not self.is_main:
            return
        cfg, sets, out_dir = self.cfg, self.sets, self.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            for stale in (self.last_path, self.best_path):
                stale.unlink(missing_ok=True)
        doc = {**cfg.to_dict(), "resolved": {
            "data": sets.data.describe(), "validation": sets.val.describe() if sets.val is not None else None,
            "num_classes": sets.data.num_classes, "held_out_classes": sets.held_out, "world_size": self.world,
            "device": str(self.device), "preprocess": self.preprocess.to_dict(), "encoder": self.spec,
            "loss": getattr(self.objective, "loss_name", cfg.objective), "steps_per_epoch": self.steps}}
        atomic_write_text(out_dir / "config.json", json.dumps(doc, indent=2, default=str) + "\n")
        if not cfg.resume:
            write_metrics(out_dir / "metrics.jsonl", self.metrics)

    # -------------------------------------------------------------- the run
    def _fit(self, data: ImageSet, val: ImageSet | None, out_dir: Path) -> TrainResult:
        self._setup(data, val, out_dir)
        self._resume()
        self._write_start()
        cfg, device, model = self.cfg, self.device, self.model
        self.run_model = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel
            self.run_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            self.run_model = torch.compile(self.run_model)
        images = self.sets.data.images
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            images = images.to(device) if images.numel() < 0.25 * free else images.pin_memory()
        self.images = images
        self.check_every = 1 if device.type == "cpu" else 20
        # Everything a step may poison (watched) and what it changes before its update (snapshot).
        obj = self.objective
        self.watched = [*model.parameters(), *model.buffers(), *obj.parameters(), *obj.buffers()]
        self.snapshot = StepSnapshot([*model.buffers(), *obj.buffers()], [self.gen], device)
        # Where the run stands, for a KeyboardInterrupt: ``at`` (epoch, step) is the next step to run
        # when ``phase`` is "idle"; "step" is a step before its optimizer update (rolled back),
        # "update" inside it (nothing written), "stepped" after it (finished), "commit"/"final" the
        # epoch-end and end-of-run writes (nothing written; a resume reconciles).
        self.cur = {"phase": "idle", "at": self.start, "out": None}
        self.optimizer.register_step_post_hook(lambda *_: self.cur.__setitem__("phase", "stepped"))
        self.sums = self.run_sums or _zero_sums()
        interrupts = DeferredInterrupt(enabled=not self.distributed)
        interrupts.__enter__()  # first Ctrl-C: finish the step, save at its boundary
        try:
            model.train()
            for epoch in range(self.start[0], cfg.epochs):
                self._epoch(epoch, interrupts)
            self._finish()
            self.cur["phase"] = "done"
        except KeyboardInterrupt:
            if self.is_main:
                self.emit("on_message", self._save_interrupted())
            raise
        finally:
            interrupts.__exit__()
            if self.distributed and torch.distributed.is_initialized():
                torch.distributed.barrier()
        best_acc = self.best["accuracy"] if self.best else None
        return TrainResult(out_dir, self.best_path, self.last_path, self.metrics, best_acc,
                           self.sets.held_out, cfg, model)

    def _epoch(self, epoch: int, interrupts: DeferredInterrupt) -> None:
        cfg, steps = self.cfg, self.steps
        batches = self.batches.epoch(epoch)
        first = self.start[1] if epoch == self.start[0] else 0
        if epoch == self.start[0] and self.resume_gen_state is not None and first > 0:
            self.gen.set_state(self.resume_gen_state)
        else:
            self.gen.manual_seed(derive_seed(cfg.seed, epoch, 2))
            self.sums = _zero_sums()
        self.emit("on_epoch_begin", epoch, cfg.epochs, steps, first)
        t0 = time.perf_counter()
        for step in range(first, steps):
            self.cur["at"] = (epoch, step)
            if interrupts.requested:  # a clean boundary: the previous step is finished
                raise KeyboardInterrupt
            self._step(epoch, step, batches)
            if self.callbacks:
                elapsed = self.sums["time"] + time.perf_counter() - t0
                self.emit("on_step_end", step, {"loss": self.sums["loss"] / (step + 1),
                                                "img_per_s": self.sums["seen"] / max(elapsed, 1e-9)})
        self.sums["time"] += time.perf_counter() - t0
        if self.distributed:  # BN running stats saw each rank's own last batch: every rank keeps rank 0's
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, 0)
        self._end_epoch(epoch)
        if interrupts.requested:
            raise KeyboardInterrupt

    def _step(self, epoch: int, step: int, batches) -> None:
        device, obj = self.device, self.objective
        self.snapshot.take()
        self.cur["phase"] = "step"
        idx, target = batches.batch(step, self.rank, self.world)
        x = self.images[idx.to(self.images.device)].to(device, non_blocking=True)
        x = self.train_preprocess.normalize(self.augment(self.train_preprocess.to_unit(x), self.gen))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            emb, logits = self.run_model(x)
        loss, parts, correct, scored = obj(emb.float(), logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.distributed:
            obj.reduce_gradients(self.world)
        checked = step % self.check_every == 0 or step == self.steps - 1
        if checked:
            value = loss.detach()
            if self.distributed:
                value = value.clone()
                torch.distributed.all_reduce(value)
            if not torch.isfinite(value):
                raise FewShotError(f"loss became {float(value)} at epoch {epoch + 1} step {step + 1}; "
                                   f"stopped, {self._kept()} (try a lower learning rate)")
        self.cur.update(phase="update", out=(loss, parts, correct, scored, int(idx.shape[0])))
        self.optimizer.step()  # its post-hook sets phase "stepped"
        self._book(epoch, step)
        if checked:
            self._check_weights(epoch, step)

    def _book(self, epoch: int, step: int) -> None:
        """Finish step ``step``: the scheduler step (unless done) and the running sums (unless
        booked), then mark the next step; each part is applied once even when re-entered."""
        if self.scheduler.last_epoch < epoch * self.steps + step + 1:
            self.scheduler.step()
        sums = self.sums
        if sums.get("steps") != step + 1:
            loss, parts, correct, scored, images = self.cur["out"]
            new = {**sums, "loss": sums["loss"] + float(loss.detach()),
                   **{k: sums.get(k, 0.0) + float(v.detach()) for k, v in parts.items()},
                   "correct": sums["correct"] + float(correct), "scored": sums.get("scored", 0) + scored,
                   "seen": sums["seen"] + images * self.world, "steps": step + 1}
            self.sums = new
        self.cur.update(phase="idle", at=(epoch, step + 1), out=None)

    def _end_epoch(self, epoch: int) -> None:
        """The epoch's row, validation, the best-epoch record, and the commit (``last.pt``)."""
        sums, n = self.sums, self.steps
        row = {"epoch": epoch + 1, "loss": sums["loss"] / n,
               **{key: sums.get(part, 0.0) / n for part, key in self.objective.parts.items()},
               "train_acc": sums["correct"] / max(1, sums.get("scored", sums["seen"] // self.world)),
               "lr": self.optimizer.param_groups[0]["lr"],
               "img_per_s": sums["seen"] / max(sums["time"], 1e-9), "epoch_time_s": sums["time"]}
        if self.validation is not None:
            due, with_tta = self.validation.due(epoch)
            if due:
                row.update(self.validation(self.model, self.preprocess, self.device, self.objective,
                                           with_tta))
            improved = row.get("val_accuracy") is not None and row["val_accuracy"] > _accuracy(self.best)
        else:
            improved = True  # no validation: the latest epoch is the best
        row["best"] = bool(improved)
        self._check_weights(epoch, n - 1)  # never commit a non-finite state
        # The epoch's record goes into last.pt, the commit point (fewshot.training.runstate); from
        # here until it is written an interrupt writes nothing (last.pt is the previous epoch).
        self.cur["phase"] = "commit"
        self.metrics = [*self.metrics, row]
        ckpt = self._state(epoch + 1, 0, None)
        if improved:
            self.best = {"epoch": epoch + 1, "accuracy": row.get("val_accuracy"), "hash": ckpt["hash"]}
            ckpt.update(best=self.best, best_accuracy=_accuracy(self.best))
        if self.is_main:
            commit_epoch(self.out_dir, ckpt, improved, self.metrics)
        self.emit("on_epoch_end", row, self.metrics, self.out_dir)
        self.saved = (self.last_path, epoch + 1, 0)
        self.cur.update(phase="idle", at=(epoch + 1, 0))
        self.resume_gen_state = None

    def _finish(self) -> None:
        """Base statistics (:meth:`_base_statistics`) of the best and the last encoders: ``best.pt`` first,
        ``last.pt`` (the commit point) last; a resume of a finished run redoes this part."""
        self.cur["phase"] = "final"
        if not self.is_main:
            return
        model = self.model
        last = load_checkpoint(self.last_path)
        if self.best_path.exists():
            best_ckpt = load_checkpoint(self.best_path)
            model.load_state_dict(best_ckpt["model"])
            best_ckpt.update(self._base_statistics())
            model.load_state_dict(last["model"])
        else:
            best_ckpt = last
        last.update(self._base_statistics())
        save_checkpoint(self.best_path, best_ckpt)
        save_checkpoint(self.last_path, last)

    def _base_statistics(self) -> dict:
        """``base_mean [D]`` (for centred-l2 features) and ``base_class_means`` (per feature
        transform, ``[C, D]``: what ``proto-dc`` calibrates toward) of the real base images."""
        base = self.sets.base
        feats = embed(self.model, base.images, self.train_preprocess, device=self.device, batch_size=512,
                      progress=False).cpu()
        return {"base_mean": feats.mean(0), "base_class_means": class_means(feats, base.labels)}

    # ---------------------------------------------------------- state, guards
    def _state(self, epoch: int, step: int, sums: dict | None) -> dict:
        """The whole state of the run at (epoch, step): what ``last.pt`` holds."""
        cfg, device, data, model = self.cfg, self.device, self.sets.data, self.model
        distance = self.objective.distance

        ckpt = {
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "encoder": self.spec, "preprocess": self.preprocess.to_dict(), "distance": distance,
            "base_classes": list(data.class_names), "data_fingerprint": data.fingerprint,
            "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loss_state": self.objective.saved_state(),
            "sampler": {"kind": self.objective.kind, "epoch": epoch, "step": step, "seed": cfg.seed},
            "rng": {"torch": torch.get_rng_state(), "augment": self.gen.get_state().cpu(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "running": sums, "epoch": epoch, "metrics": list(self.metrics), "best": self.best,
            "best_accuracy": _accuracy(self.best),
            "val_accuracy": self.metrics[-1].get("val_accuracy") if self.metrics else None,
            "hash": None, "base_mean": None, "base_class_means": None,
            "tta": tta_from_config(cfg.to_dict(), data.channels, distance).to_dict(),  # eval's default
            "transform": cfg.eval_transform,  # eval's default feature transform (None: by the distance)
        }
        ckpt["hash"] = state_hash(ckpt["model"])
        return ckpt

    def _save_interrupted(self) -> str:
        """Save what a KeyboardInterrupt leaves (:func:`fewshot.training.faults.save_interrupted`)."""
        finite = lambda: bool(all_finite(self.watched))  # noqa: E731
        return save_interrupted_state(self.cur, self.snapshot, self._book, finite,
                                      lambda at: self._state(*at, self.sums), self.last_path, self.saved)

    def _kept(self) -> str:
        """Which checkpoint is still good, for the message of a stop."""
        if self.saved is None:
            return "no checkpoint was written yet, so none is kept"
        path, epoch, step = self.saved
        return f"the last good checkpoint {path} (epoch {epoch}, step {step}) is finite and intact"

    def _check_weights(self, epoch: int, step: int) -> None:
        """Stop (FewShotError) when a weight or buffer went NaN / inf: one fused check, one sync."""
        ok = all_finite(self.watched)
        if self.distributed:
            ok = ok.float()
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if not bool(ok):
            state = self.objective.saved_state() or {}
            names = nonfinite_names({**self.model.state_dict(), **{f"loss.{k}": v for k, v in state.items()}})
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise FewShotError(f"weights became non-finite ({shown or 'elements beyond float32 range'}) "
                               f"by epoch {epoch + 1} step {step + 1}; stopped, {self._kept()} "
                               "(try a lower learning rate)")


def _optimizer(cfg: TrainConfig, params: list[dict]) -> torch.optim.Optimizer:
    kw = {"weight_decay": cfg.weight_decay, **update_kernel(params)}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, **kw)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, **kw)
    return torch.optim.AdamW(params, lr=cfg.lr, **kw)


def update_kernel(params: list[dict]) -> dict:
    """How the optimizer updates the weights: ``fused`` (one kernel for the whole update) where
    every parameter lives on the CPU or CUDA, else ``foreach`` (one pass per operation over all
    parameters; torch's default only on CUDA). Both give the same weights; on the 2-core CPU the
    fused SGD update takes a third of the foreach one and the Omniglot recipe's training loop runs
    5-15% faster (``benchmarks/optimizer_speed.py``)."""
    devices = {p.device.type for group in params for p in group["params"]}
    return {"fused": True} if devices and devices <= {"cpu", "cuda"} else {"foreach": True}


def _accuracy(best: dict | None) -> float:
    """The checkpoint's ``best_accuracy``: -1 when there is no validated best."""
    return best["accuracy"] if best and best.get("accuracy") is not None else -1.0


def _zero_sums() -> dict:
    return {"loss": 0.0, "metric": 0.0, "ce": 0.0, "correct": 0.0, "scored": 0, "seen": 0, "time": 0.0,
            "steps": 0}
