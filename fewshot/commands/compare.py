"""``fewshot compare``: train on base classes and compare heads on novel classes, one command, one report."""

from __future__ import annotations

import argparse
import time

from fewshot.commands.argtypes import add_tta_arguments, int_list

HELP = "train an encoder, then compare few-shot heads on novel classes (default: the built-in glyph set)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fewshot.evaluation.features import TRANSFORMS
    from fewshot.experiments.compare import DEFAULT_HEADS
    from fewshot.models.encoders import ENCODERS
    from fewshot.models.losses import DISTANCES, LOSSES, MINERS
    from fewshot.registry import choices_help

    d = p.add_argument_group("data")
    d.add_argument("--data", default="glyphs",
                   help="base classes to train on: glyphs (default, built in), omniglot:PATH[+PATH], "
                        "miniimagenet:ROOT, folder:PATH; optional ?groups=A,B")
    d.add_argument("--split", default=None,
                   help="split of --data to train on (default: base when it has one)")
    d.add_argument("--novel", default=None, metavar="SPEC",
                   help="novel classes to evaluate on (default: the novel set of --data's protocol)")
    d.add_argument("--novel-split", default=None, help="split of --novel (default: novel when it has one)")
    d.add_argument("--val", default=None, metavar="SPEC",
                   help="validation classes (default: the recipe's, else the val split of --data, "
                        "else held-out base classes)")
    d.add_argument("--val-split", default=None, help="split of --val")
    t = p.add_argument_group("training (override the recipe)")
    t.add_argument("--recipe", default=None,
                   help="training recipe name or .toml file (default: the one named after the data kind)")
    t.add_argument("--encoder", default=None, help=choices_help(ENCODERS))
    t.add_argument("--embedding-dim", type=int, default=None)
    t.add_argument("--loss", default=None, help=choices_help(LOSSES))
    t.add_argument("--miner", default=None, help=choices_help(MINERS))
    t.add_argument("--w-metric", type=float, default=None, help="weight of the metric loss")
    t.add_argument("--w-ce", type=float, default=None, help="weight of the joint cross-entropy")
    t.add_argument("--m", type=int, default=None, help="images per class in a batch (M-per-class sampler)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None, help="training seed (default: the recipe's, 0)")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    t.add_argument("--set", action="append", default=[], metavar="K=V",
                   help="any other training setting, e.g. --set val_episodes=200 (repeatable)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard events to OUT/tensorboard (needs the tensorboard extra)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--heads", default=",".join(DEFAULT_HEADS), help="heads to compare (default: %(default)s)")
    e.add_argument("--shot", "--shots", dest="shot", type=int_list, default=[1, 5],
                   help="shots, comma-separated (default 1,5)")
    e.add_argument("--way", type=int, default=5, help="classes per episode (default 5)")
    e.add_argument("--query", type=int, default=15, help="query images per class (default 15)")
    e.add_argument("--episodes", type=int, default=2000, help="fixed episodes per shot (default 2000)")
    e.add_argument("--episode-seed", type=int, default=0, help="episode sampling seed (default 0)")
    e.add_argument("--transform", choices=TRANSFORMS, default=None,
                   help="feature transform (default: the checkpoint's distance decides)")
    e.add_argument("--distance", choices=DISTANCES, default=None)
    e.add_argument("--within-group", action="store_true", help="all classes of an episode from one group")
    e.add_argument("--tsne", action="store_true", help="also plot a t-SNE of novel features")
    add_tta_arguments(e, "the recipe's, as recorded in the checkpoint")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/compare-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from fewshot.errors import FewShotError
    from fewshot.evaluation.evaluate import split_heads
    from fewshot.evaluation.tta import parse_tta_args
    from fewshot.experiments.compare import CompareConfig, compare
    from fewshot.options import declared, parse_pairs, typed_options
    from fewshot.training.trainer import TrainConfig

    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"encoder": args.encoder, "embedding_dim": args.embedding_dim, "loss": args.loss,
                 "miner": args.miner, "w_metric": args.w_metric, "w_ce": args.w_ce, "m": args.m,
                 "batch_size": args.batch_size, "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                 "device": args.device, "tensorboard": args.tensorboard}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(typed_options(declared(TrainConfig)[0], parse_pairs(args.set, "--set"), "training"))
    heads = split_heads(args.heads)
    if not heads:
        raise FewShotError("--heads names no head")
    if args.out:
        from episodes.atomic import ensure_writable_dir
        ensure_writable_dir(args.out, error=FewShotError)
    cfg = CompareConfig(data=args.data, split=args.split, novel=args.novel, novel_split=args.novel_split,
                        val=args.val, val_split=args.val_split, recipe=args.recipe, train=overrides,
                        heads=tuple(heads), way=args.way, shots=tuple(args.shot), query=args.query,
                        episodes=args.episodes, episode_seed=args.episode_seed, transform=args.transform,
                        distance=args.distance, within_group=args.within_group, tsne=args.tsne, out=args.out,
                        tta=args.tta, tta_args=parse_tta_args(args.tta_arg))
    result = compare(cfg, progress=not args.quiet)
    print(result.table())
    print()
    print(f"run folder: {result.out_dir}")
    for name, path in result.files.items():
        print(f"  {name:<22} {path}")
    s = result.seconds
    print(f"time: data {s['data']:.1f} s, train {s['train']:.1f} s, eval {s['eval']:.1f} s, "
          f"total {time.perf_counter() - start:.1f} s")
    return 0

