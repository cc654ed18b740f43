"""``fewshot episodes``: draw N-way K-shot episodes from a data spec and save them as a manifest."""

from __future__ import annotations

import argparse

from episodes.atomic import ensure_writable_file
from episodes.errors import DatasetError
from episodes.manifest import save_manifest
from episodes.sampling import EpisodeSpec, sample_episodes
from episodes.specs import load_data

HELP = "draw seeded N-way K-shot episodes from a data set and save them as a JSON manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="data spec: glyphs, omniglot:PATH[+PATH], omniglot-runs:PATH, "
                             "miniimagenet:ROOT, folder:PATH, digits; optional ?groups=A,B / "
                             "?exclude_groups=A")
    parser.add_argument("--split", default=None, help="base, val or novel (train/val/test accepted)")
    parser.add_argument("--way", type=int, default=5, help="classes per episode (default 5)")
    parser.add_argument("--shot", type=int, default=1, help="support images per class (default 1)")
    parser.add_argument("--query", type=int, default=15, help="query images per class (default 15)")
    parser.add_argument("--episodes", type=int, default=2000, help="number of episodes (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--within-group", action="store_true",
                        help="take all classes of an episode from one group (e.g. one Omniglot alphabet)")
    parser.add_argument("--drop-small", action="store_true",
                        help="leave out classes with fewer than shot+query images instead of failing")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize images (changes the data set fingerprint the manifest is tied to)")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default $FEWSHOT_CACHE_DIR "
                                                          "or ~/.cache/fewshot)")
    parser.add_argument("--out", required=True, metavar="MANIFEST.json", help="where to write the manifest")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise DatasetError(f"--episodes must be positive, got {args.episodes}")
    ensure_writable_file(args.out)
    data = load_data(args.data, args.split, image_size=args.image_size, cache_dir=args.cache_dir)
    spec = EpisodeSpec(args.way, args.shot, args.query)
    episodes = sample_episodes(data, spec, args.episodes, seed=args.seed, within_group=args.within_group,
                               drop_small=args.drop_small)
    path = save_manifest(args.out, episodes, data)
    used = len(set(episodes.classes.reshape(-1).tolist()))
    print(f"wrote {len(episodes)} episodes ({spec}, seed {args.seed}"
          f"{', within-group' if args.within_group else ''}) over {used} of {data.num_classes} classes of "
          f"{data.name} [fingerprint {data.fingerprint}] to {path}")
    return 0
