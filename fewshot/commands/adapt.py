"""``fewshot adapt``: fit a head on a folder of new classes and save a standalone classifier."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from episodes.atomic import ensure_writable_file
from fewshot.adaptation.classifier import HEAD_KINDS
from fewshot.commands.argtypes import add_tta_arguments
from fewshot.errors import FewShotError
from fewshot.evaluation.features import TRANSFORMS

HELP = "fit a few-shot classifier on a folder of new classes (<class>/<images>) and save it as one file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="trained encoder checkpoint (e.g. runs/x/best.pt)")
    parser.add_argument("--support", required=True,
                        help="folder of class folders: DIR/<class>/*.{png,jpg,...}")
    parser.add_argument("--head", choices=HEAD_KINDS, default=None,
                        help="head to fit (default: the winner in --results, else ls)")
    parser.add_argument("--results",
                        help="results.json of `fewshot eval`: its best adaptable head is the default")
    parser.add_argument("--transform", choices=TRANSFORMS, default=None,
                        help="feature transform (default: from --results, else l2 for cosine encoders, "
                             "none otherwise)")
    parser.add_argument("--lam", type=float, default=None, help="fixed ridge lambda (default: leave-one-out)")
    parser.add_argument("--out", help="model file to write (default with --update: the updated file)")
    parser.add_argument("--reference", action="store_true",
                        help="store the checkpoint's path and hash instead of the encoder weights")
    parser.add_argument("--strict", action="store_true", help="unreadable or non-image files are errors")
    parser.add_argument("--update", metavar="MODEL", help="add the classes/shots of --support to this model")
    parser.add_argument("--int8", action="store_true",
                        help="predict with an int8 encoder calibrated on the support images (CPU, faster; "
                             "predictions may differ slightly from float32)")
    add_tta_arguments(parser, "the checkpoint's recipe setting, else 1; with --update: the model's")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from fewshot.adaptation.adapt import adapt, update
    from fewshot.adaptation.classifier import load_classifier
    from fewshot.evaluation.tta import parse_tta_args

    if args.update is None and args.checkpoint is None:
        raise FewShotError("give --checkpoint (or --update MODEL to extend a saved classifier)")
    out = args.out or args.update
    if out is None:
        raise FewShotError("give --out MODEL to say where to write the classifier")
    ensure_writable_file(out, error=FewShotError)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.update is not None:
            if args.tta is not None or args.tta_arg:
                raise FewShotError("--update keeps the model's test-time augmentation; drop --tta/--tta-arg")
            clf = load_classifier(args.update, device=args.device)
            clf = update(clf, args.support, lam=args.lam, strict=args.strict, batch_size=args.batch_size,
                         progress=True)
        else:
            clf = adapt(args.checkpoint, args.support, head=args.head, results=args.results,
                        transform=args.transform, lam=args.lam, reference=args.reference, strict=args.strict,
                        batch_size=args.batch_size, device=args.device, progress=True,
                        int8=args.int8, tta_views=args.tta, tta_args=parse_tta_args(args.tta_arg))
    for w in caught:
        print(f"fewshot adapt: warning: {w.message}", file=sys.stderr)
    print(clf.report.table())
    path = clf.save(out)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    return 0
