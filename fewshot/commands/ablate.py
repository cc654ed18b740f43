"""``fewshot ablate``: a resumable grid of training and head choices, scored on fixed episodes."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "run a resumable ablation grid (loss x miner x weights x m x dim x mode x head x shot ...) over seeds"

FACTOR_FLAGS = {  # flag -> (factor, type of one level)
    "mode": ("mode", str), "loss": ("loss", str), "miner": ("miner", str), "weights": ("weights", "pair"),
    "m": ("m", int), "embedding_dim": ("embedding_dim", "dim"), "encoder": ("encoder", str),
    "episodic_head": ("episodic_head", str), "epochs": ("epochs", int), "lr": ("lr", float),
    "batch_size": ("batch_size", int), "heads": ("head", str), "shot": ("shot", int),
    "transform": ("transform", str),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fewshot.evaluation.features import TRANSFORMS
    from fewshot.models.encoders import ENCODERS
    from fewshot.models.losses import LOSSES, MINERS
    from fewshot.registry import choices_help

    p.add_argument("--grid", default=None, metavar="TOML",
                   help="grid file (see benchmarks/ablations/*.toml); flags below override its entries")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results folder; rerunning with the same folder resumes (default runs/ablate-<name>)")
    p.add_argument("--name", default=None, help="name of the ablation (default: the grid file's)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, help="training data spec (default glyphs)")
    d.add_argument("--split", default=None, help="training split (default base)")
    d.add_argument("--novel", action="append", default=None, metavar="[NAME=]SPEC",
                   help="evaluation set (repeatable; default: the novel set of --data's benchmark protocol)")
    d.add_argument("--novel-split", default=None, help="split of every --novel spec")
    d.add_argument("--within-group", action="store_true", help="within-group episodes on every --novel set")
    f = p.add_argument_group("factors (comma-separated levels; one level = a fixed setting)")
    f.add_argument("--mode", help="metric, episodic")
    f.add_argument("--loss", help=choices_help(LOSSES))
    f.add_argument("--miner", help=choices_help(MINERS))
    f.add_argument("--weights", help="W_METRIC/W_CE pairs, e.g. 0.1/1,1/0,0/1")
    f.add_argument("--m", help="images per class in a batch, e.g. 2,4,8")
    f.add_argument("--embedding-dim", help="projection sizes, e.g. none,64")
    f.add_argument("--encoder", help=choices_help(ENCODERS))
    f.add_argument("--episodic-head", help="proto (ProtoNet), ls (R2-D2)")
    f.add_argument("--epochs", help="training epochs")
    f.add_argument("--lr", help="learning rates")
    f.add_argument("--batch-size", help="batch sizes (metric mode)")
    f.add_argument("--heads", "--head", dest="heads", help="proto, nn, ls, ls-mlp, logreg")
    f.add_argument("--shot", "--shots", dest="shot", help="shots, e.g. 1,5,10,20")
    f.add_argument("--transform", help=f"default (the checkpoint's), {choices_help(TRANSFORMS)}")
    o = p.add_argument_group("fixed settings")
    o.add_argument("--recipe", default=None, help="training recipe the metric cells start from")
    o.add_argument("--set", action="append", default=[], metavar="K=V",
                   help="fixed training setting for metric cells (TrainConfig field), repeatable")
    o.add_argument("--episodic-set", action="append", default=[], metavar="K=V",
                   help="fixed setting for episodic cells (EpisodicConfig field), repeatable")
    o.add_argument("--seeds", default=None,
                   help="N (seeds 0..N-1) or a comma-separated list (default 3)")
    o.add_argument("--episodes", type=int, default=None,
                   help="fixed episodes per evaluation set (default 600)")
    o.add_argument("--way", type=int, default=None, help="classes per episode (default 5)")
    o.add_argument("--query", type=int, default=None, help="queries per class (default 15)")
    o.add_argument("--episode-seed", type=int, default=None,
                   help="seed of the evaluation episodes (default 0)")
    o.add_argument("--device", default=None, help="training device (default: the recipe's)")
    o.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    r = p.add_argument_group("run")
    r.add_argument("--dry-run", action="store_true", help="list the training cells and exit")
    r.add_argument("--summary-only", action="store_true", help="rebuild summary.md from results.json")
    r.add_argument("--quiet", action="store_true", help="no progress bars")


def _level(text: str, kind, flag: str):
    from fewshot.errors import FewShotError

    text = text.strip()
    try:
        if kind == "pair":
            a, sep, b = text.replace(":", "/").partition("/")
            if not sep:
                raise ValueError
            return [float(a), float(b)]
        if kind == "dim":
            return None if text.lower() in ("none", "0") else int(text)
        return kind(text)
    except ValueError:
        raise FewShotError(f"--{flag.replace('_', '-')}: cannot read level {text!r}"
                           + (" (want W_METRIC/W_CE)" if kind == "pair" else "")) from None


def build_grid(args: argparse.Namespace):
    """The grid of ``--grid`` with every flag applied on top."""
    from fewshot.errors import FewShotError
    from fewshot.experiments.grid import grid_from_dict, read_grid_file
    from fewshot.options import declared, parse_pairs, typed_options
    from fewshot.training.episodic import EpisodicConfig
    from fewshot.training.trainer import TrainConfig

    doc: dict = {}
    source = None
    if args.grid:
        doc = read_grid_file(args.grid)
        source = str(Path(args.grid))
    grid = dict(doc.get("grid", {})) if isinstance(doc.get("grid", {}), dict) else doc.get("grid")
    if isinstance(grid, dict):
        for flag, (factor, kind) in FACTOR_FLAGS.items():
            value = getattr(args, flag)
            if value is not None:
                grid[factor] = [_level(v, kind, flag) for v in value.split(",") if v.strip()]
        doc["grid"] = grid
    for key in ("name", "data", "split", "recipe", "device"):
        if getattr(args, key) is not None:
            doc[key] = getattr(args, key)
    if args.seeds is not None:
        try:
            values = [int(v) for v in args.seeds.split(",") if v.strip()]
        except ValueError:
            raise FewShotError(f"--seeds wants N or a comma-separated list of integers, "
                               f"got {args.seeds!r}") from None
        doc["seeds"] = values[0] if len(values) == 1 else values
    ev = dict(doc.get("eval", {})) if isinstance(doc.get("eval", {}), dict) else doc.get("eval")
    if isinstance(ev, dict):
        for key, attr in (("episodes", "episodes"), ("way", "way"), ("query", "query"),
                          ("seed", "episode_seed")):
            if getattr(args, attr) is not None:
                ev[key] = getattr(args, attr)
        if args.novel:
            sets = []
            for item in args.novel:
                name, eq, spec = item.partition("=")
                if not eq or ":" in name or "?" in name:
                    name, spec = f"set{len(sets) + 1}", item
                sets.append({"name": name, "data": spec, "split": args.novel_split,
                             "within_group": args.within_group})
            ev["sets"] = sets
        doc["eval"] = ev
    if args.set:
        doc["train"] = {**doc.get("train", {}), **typed_options(
            declared(TrainConfig)[0], parse_pairs(args.set, "--set"), "training")}
    if args.episodic_set:
        episodic = parse_pairs(args.episodic_set, "--episodic-set")
        doc["episodic"] = {**doc.get("episodic", {}),
                           **typed_options(declared(EpisodicConfig)[0], episodic, "episodic training")}
    return grid_from_dict(doc, source=source)


def run(args: argparse.Namespace) -> int:
    import torch

    from fewshot.experiments.ablate import load_results, run_ablation
    from fewshot.experiments.summary import format_comparisons, format_table, summarize, write_summary

    grid = build_grid(args)
    out = Path(args.out) if args.out else Path("runs") / f"ablate-{grid.name}"
    if not args.dry_run:
        from episodes.atomic import ensure_writable_dir
        from fewshot.errors import FewShotError
        ensure_writable_dir(out, error=FewShotError)
    argv = sys.argv[1:]
    command = "fewshot " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["ablate"] else None
    cells = grid.cells()
    if args.dry_run:
        evals = grid.eval_points()
        print(f"{grid.name}: {len(cells)} training cell(s) x {len(grid.seeds)} seed(s) = "
              f"{len(cells) * len(grid.seeds)} trainings; {len(evals)} evaluation point(s) x "
              f"{len(grid.eval_sets)} set(s) each, {grid.episodes} episodes")
        for cell in cells:
            print(f"  {cell.id}  {cell.label()}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.summary_only:
        doc = load_results(out)
        summary = summarize(grid, doc)
        path = write_summary(grid, summary, out, command=doc.get("command") or command)
    else:
        result = run_ablation(grid, out, progress=not args.quiet, command=command)
        summary, path = result.summary, out / "summary.md"
        print(f"{grid.name}: {result.trained} training(s) run, {result.skipped} reused from "
              f"{out / 'results.json'}")
    print(format_table(grid, summary, markdown=False))
    if summary["comparisons"]:
        print()
        print(format_comparisons(summary, markdown=False))
    print()
    print(f"summary: {path}")
    return 0
