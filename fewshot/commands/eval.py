"""``fewshot eval``: score heads on identical novel-class episodes with a trained encoder."""

from __future__ import annotations

import argparse
import sys

from episodes.atomic import ensure_writable_dir
from fewshot.commands.argtypes import add_tta_arguments, int_list
from fewshot.errors import FewShotError

HELP = "score heads (proto, nn, ls, ls-mlp, logreg) on the same novel-class episodes, paired statistics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fewshot.evaluation.evaluate import DEFAULT_HEADS
    from fewshot.evaluation.features import TRANSFORMS
    from fewshot.models.losses import DISTANCES

    p.add_argument("--checkpoint", required=True, help="trained encoder checkpoint (runs/x/best.pt)")
    p.add_argument("--data", required=True,
                   help="data spec: glyphs, omniglot:PATH, omniglot-runs:PATH (challenge mode), "
                        "miniimagenet:ROOT, folder:PATH, digits; optional ?groups=A,B")
    p.add_argument("--split", default=None, help="base / val / novel (default: the spec's default)")
    p.add_argument("--heads", default=",".join(DEFAULT_HEADS),
                   help="comma-separated heads, options as name:key=value (e.g. proto,nn:k=5,ls:lam=1.0); "
                        "default: %(default)s")
    p.add_argument("--shot", type=int_list, default=[1, 5], help="shots, comma-separated (default 1,5)")
    p.add_argument("--way", type=int, default=5, help="classes per episode (default 5)")
    p.add_argument("--query", type=int, default=15, help="query images per class (default 15)")
    p.add_argument("--episodes", type=int, default=2000, help="episodes per shot (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="episode sampling seed (default 0)")
    p.add_argument("--transform", choices=TRANSFORMS, default=None,
                   help="feature transform (default: l2 for cosine-trained checkpoints, none for euclidean)")
    p.add_argument("--distance", choices=DISTANCES, default=None,
                   help="distance of proto and nn (default: the checkpoint's training distance)")
    p.add_argument("--within-group", action="store_true", help="all classes of an episode from one group")
    p.add_argument("--episodes-file", action="append", default=None, metavar="MANIFEST",
                   help="score the episodes of this manifest instead of drawing them (repeat: one per shot)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write results.json, results.md, episodes.csv, accuracy_vs_shot.png here")
    p.add_argument("--tsne", action="store_true", help="also write tsne.png of the features (needs --out)")
    add_tta_arguments(p, "the checkpoint's recipe setting, else 1")
    p.add_argument("--no-retrieval", action="store_true",
                   help="skip the retrieval figures (precision@1, R-precision, MAP@R over all images)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--batch-size", type=int, default=256, help="embedding batch size (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_eval_data(spec: str, split: str | None):
    """``(ImageSet, fixed Episodes or None)``: the Omniglot challenge runs give fixed episodes."""
    import episodes

    if spec.startswith("omniglot-runs:"):
        loader = getattr(episodes, "load_runs", None)
        if loader is None:
            from episodes.readers.omniglot_runs import read_runs as loader
        data, runs = loader(spec.split(":", 1)[1])
        return data, runs
    load_data = getattr(episodes, "load_data", None)
    if load_data is None:
        raise FewShotError("this installation's episodes package has no load_data")
    return load_data(spec, split or None), None


def run(args: argparse.Namespace) -> int:
    from episodes.protocols import EpisodeProtocol
    from fewshot.evaluation.evaluate import evaluate
    from fewshot.evaluation.report import write_report
    from fewshot.evaluation.tta import parse_tta_args

    for name in ("way", "query", "episodes", "batch_size"):
        if getattr(args, name) < 1:
            raise FewShotError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.tsne and not args.out:
        raise FewShotError("--tsne writes a picture: give --out DIR")
    if args.out:
        ensure_writable_dir(args.out, error=FewShotError)
    data, runs = load_eval_data(args.data, args.split)
    challenge = runs is not None
    if challenge and args.episodes_file:
        raise FewShotError("omniglot-runs data come with fixed episodes; drop --episodes-file")
    episodes = runs if challenge else args.episodes_file or EpisodeProtocol(
        args.way, tuple(args.shot), args.query, args.episodes, args.within_group, args.seed)
    result = evaluate(
        args.checkpoint, data, heads=args.heads, episodes=episodes, transform=args.transform,
        distance=args.distance, tsne=args.tsne, progress=not args.quiet, device=args.device,
        batch_size=args.batch_size, challenge=challenge, tta_views=args.tta,
        tta_args=parse_tta_args(args.tta_arg), retrieval=not args.no_retrieval)
    if args.out:
        write_report(result, args.out)
    print(result.table())
    if challenge:
        print(f"(Omniglot challenge: {len(result.accuracy[(result.heads[0], result.shots[0])])} runs, "
              "20-way 1-shot; error rate averaged over runs)")
    if args.out:
        print(f"wrote {args.out}/results.json, results.md, episodes.csv, accuracy_vs_shot.png"
              + (", tsne.png" if args.tsne else ""), file=sys.stderr)
    return 0
