"""``fewshot train``: train an encoder on base classes, validate episodically, write a run folder."""

from __future__ import annotations

import argparse
import sys

from episodes.atomic import ensure_writable_dir
from fewshot.device import PRECISIONS
from fewshot.errors import FewShotError
from fewshot.evaluation.features import TRANSFORMS
from fewshot.models.encoders import ENCODERS, typed_encoder_args
from fewshot.models.losses import DISTANCES, LOSSES, MINERS
from fewshot.options import declared, parse_pairs, typed_options
from fewshot.registry import choices_help
from fewshot.training.augment import Augment
from fewshot.training.config import OBJECTIVES, OPTIMIZERS, SAMPLERS, TrainConfig

HELP = "train an encoder with a metric loss (+ cross-entropy) on base classes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="data spec of the base classes, e.g. glyphs, "
                   "omniglot:PATH.zip, miniimagenet:ROOT, folder:PATH")
    d.add_argument("--split", default=None,
                   help="split of --data to train on (default: base when it has one)")
    d.add_argument("--val", default=None, help="data spec of the validation classes (default: the recipe's, "
                   "else a seeded share of the base classes held out)")
    d.add_argument("--val-split", default=None, help="split of --val (default: val)")
    d.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, last.pt, best.pt)")
    d.add_argument("--recipe", default=None,
                   help="shipped recipe (omniglot, miniimagenet, glyphs) or a .toml file")
    m = p.add_argument_group("model")
    m.add_argument("--encoder", default=None, help=choices_help(ENCODERS, "conv4"))
    m.add_argument("--encoder-arg", action="append", default=None, metavar="K=V",
                   help="encoder option, e.g. width=128, pool=avg, drop_rate=0.1, weights=FILE")
    m.add_argument("--embedding-dim", type=int, default=None, help="project features to this size")
    m.add_argument("--image-size", type=int, default=None, help="train at this square size")
    m.add_argument("--channels", type=int, choices=(1, 3), default=None)
    m.add_argument("--frame", type=float, default=None, metavar="FILL",
                   help="drawings: crop each image to its ink's box, which fills FILL of the side "
                        "(e.g. 0.8), then resize; recorded in the checkpoint, so evaluation frames "
                        "the same way")
    m.add_argument("--download", action="store_true", default=None,
                   help="download ImageNet weights for torchvision ResNets")
    o = p.add_argument_group("objective")
    o.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="metric (loss + miner + cross-entropy, default), or episodic protonet / r2d2")
    o.add_argument("--loss", default=None, help=choices_help(LOSSES, "circle"))
    o.add_argument("--loss-arg", action="append", default=None, metavar="K=V",
                   help="loss keyword argument, e.g. m=0.25 (repeatable)")
    o.add_argument("--miner", default=None, help=choices_help(MINERS, "multisimilarity"))
    o.add_argument("--distance", choices=DISTANCES, default=None)
    o.add_argument("--w-metric", type=float, default=None, help="weight of the metric loss (default 0.1)")
    o.add_argument("--w-ce", type=float, default=None, help="weight of cross-entropy (default 1.0)")
    o.add_argument("--label-smoothing", type=float, default=None)
    s = p.add_argument_group("batches and augmentation")
    s.add_argument("--sampler", choices=SAMPLERS, default=None)
    s.add_argument("--m", type=int, default=None, help="images per class in a batch (default 4)")
    s.add_argument("--batch-size", type=int, default=None, help="global batch size (default 64)")
    s.add_argument("--rotate-classes", action=argparse.BooleanOptionalAction, default=None,
                   help="add 90/180/270-degree rotations as new classes")
    s.add_argument("--mirror-classes", action=argparse.BooleanOptionalAction, default=None,
                   help="add horizontal mirror images as new classes")
    s.add_argument("--augment-arg", action="append", default=None, metavar="K=V",
                   help="augmentation option, e.g. mode=crop, degrees=15, flip=true, elastic=0.03")
    t = p.add_argument_group("optimisation")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--warmup-epochs", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the encoder")
    t.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto (default: bf16 autocast on CUDA, fp32 on CPU); fast: bf16 also on a CPU with "
                        "AMX / AVX512-BF16 (about 2x the images per second of fp32 there), fp32 elsewhere; "
                        "fp32; bf16 on any device")
    t.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from OUT/last.pt (or the given checkpoint)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    v = p.add_argument_group("validation")
    v.add_argument("--val-every", type=int, default=None, help="validate every k epochs (default 1)")
    v.add_argument("--val-episodes", type=int, default=None)
    v.add_argument("--val-way", type=int, default=None)
    v.add_argument("--val-shots", type=int, nargs="+", default=None)
    v.add_argument("--val-within-group", action=argparse.BooleanOptionalAction, default=None)
    v.add_argument("--eval-transform", choices=TRANSFORMS, default=None,
                   help="feature transform of validation, recorded as evaluation's default "
                        "(default: by the distance, l2 for cosine)")
    v.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also write TensorBoard events to OUT/tensorboard (needs the tensorboard extra)")
    v.add_argument("--quiet", action="store_true",
                   help="no progress bars nor data summaries (notes and errors still print)")


def build_config(args: argparse.Namespace):
    """The run's TrainConfig: defaults, the recipe, the flags; ``K=V`` texts typed by the options
    declared by the encoder, the loss and :class:`~fewshot.training.augment.Augment`."""
    overrides = {
        "data": args.data, "split": args.split, "val": args.val, "out": args.out,
        "encoder": args.encoder, "embedding_dim": args.embedding_dim, "image_size": args.image_size,
        "frame": args.frame,
        "channels": args.channels, "download": args.download, "objective": args.objective, "loss": args.loss,
        "miner": args.miner, "distance": args.distance, "w_metric": args.w_metric, "w_ce": args.w_ce,
        "label_smoothing": args.label_smoothing, "sampler": args.sampler, "m": args.m,
        "batch_size": args.batch_size, "rotate_classes": args.rotate_classes,
        "mirror_classes": args.mirror_classes, "optimizer": args.optimizer,
        "lr": args.lr, "weight_decay": args.weight_decay, "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs, "seed": args.seed, "device": args.device,
        "compile": args.compile, "precision": args.precision, "resume": args.resume,
        "val_every": args.val_every,
        "val_episodes": args.val_episodes, "val_way": args.val_way, "val_shots": args.val_shots,
        "val_within_group": args.val_within_group, "tensorboard": args.tensorboard,
        "eval_transform": args.eval_transform,
        "loss_args": parse_pairs(args.loss_arg, "--loss-arg") if args.loss_arg else None,
        "encoder_args": parse_pairs(args.encoder_arg, "--encoder-arg") if args.encoder_arg else None,
        "augment": parse_pairs(args.augment_arg, "--augment-arg") if args.augment_arg else None,
    }
    cfg = TrainConfig.resolve(args.recipe, **overrides)
    cfg.encoder_args = typed_encoder_args(cfg.encoder, cfg.encoder_args)
    cfg.loss_args = LOSSES.options(cfg.loss, **cfg.loss_args)[1]
    cfg.augment = typed_options(declared(Augment)[0], cfg.augment, "augmentation")
    return cfg


def run(args: argparse.Namespace) -> int:
    import torch

    from fewshot.training.config import check_config
    from fewshot.training.data import load_training_data, load_validation
    from fewshot.training.monitor import ProgressPrinter, monitors, run_title
    from fewshot.training.trainer import train
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args)
    check_config(cfg)
    ensure_writable_dir(cfg.out, error=FewShotError)
    data = load_training_data(cfg)
    val = load_validation(cfg, data, split=args.val_split if args.val is not None else None,
                          required=args.val is not None)
    if not args.quiet:
        print(f"fewshot train: {data.describe()}", file=sys.stderr)
        if val is not None:
            print(f"fewshot train: validation {val.describe()}", file=sys.stderr)
    title = run_title(cfg.encoder, data.name, val.name if val is not None else None)
    printer = ProgressPrinter(bars=not args.quiet, epochs=not args.quiet)  # notes (Ctrl-C) even if quiet
    with monitors(cfg.out, title=title, tensorboard=cfg.tensorboard, config=cfg.to_dict(),
                  announce=not args.quiet) as callbacks:
        result = train(cfg, data, val, cfg.out, progress=False, callbacks=[printer, *callbacks])
    last = result.metrics[-1] if result.metrics else {}
    print(f"run: {result.out_dir}")
    if result.held_out_classes is not None:
        print(f"validation: {len(result.held_out_classes)} held-out base classes (seed {cfg.seed}): "
              + ", ".join(result.held_out_classes))
    shots = "/".join(str(s) for s in cfg.val_shots)
    acc = "n/a" if result.val_accuracy is None else f"{100 * result.val_accuracy:.2f}%"
    print(f"best validation accuracy ({cfg.val_way}-way {cfg.val_shots[0]}-shot"
          f"{', within group' if cfg.val_within_group else ''}): {acc}  [shots scored: {shots}]")
    if last:
        print(f"last epoch {last['epoch']}: loss {last['loss']:.4f}, {last['img_per_s']:.0f} img/s")
    print(f"checkpoints: {result.best_path} {result.last_path}")
    print(f"curves: {result.out_dir / 'curves.png'}")
    if cfg.tensorboard:
        print(f"tensorboard: tensorboard --logdir {result.out_dir / 'tensorboard'}")
    return 0
