"""``fewshot predict``: classify images with a saved few-shot classifier; CSV out, accuracy if labelled."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from pathlib import Path

from episodes.atomic import atomic_write_text, ensure_writable_file
from fewshot.commands.argtypes import add_tta_arguments
from fewshot.errors import FewShotError

HELP = "classify images or folders with a model from `fewshot adapt` (CSV: path,label,probability,top_k)"

COLUMNS = ("path", "label", "probability", "top_k")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="classifier file written by `fewshot adapt`")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image files or folders ('-' reads paths from stdin); a folder with class "
                             "subfolders is scored against them")
    parser.add_argument("--out", help="write the predictions as CSV here")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--reject", type=float, default=None, metavar="P",
                        help="label images whose top probability is below P 'unknown'")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--strict", action="store_true", help="unreadable or non-image files are errors")
    parser.add_argument("--confusion", metavar="PNG",
                        help="confusion-matrix image for labelled folders (default: beside --out; "
                             "none without --out)")
    add_tta_arguments(parser, "the model file's, as chosen at adapt time")
    parser.add_argument("--device", default="cpu")


def confusion_png(path: Path, y_true: list[str], y_pred: list[str], labels: list[str]) -> None:
    """Write a scikit-learn confusion-matrix plot (rows: true class, columns: predicted). Long class
    names are shown by what tells them apart (:func:`fewshot.figures.compact_labels`; the part they
    share goes into the axis labels), so that the matrix keeps most of the figure."""
    from sklearn.metrics import ConfusionMatrixDisplay

    from fewshot.figures import compact_labels, pyplot, save_figure

    plt = pyplot()
    shown, shared = compact_labels(labels, 24)
    side = min(40.0, max(5.0, 0.3 * len(labels) + 3))
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=labels, ax=ax, colorbar=False,
                                            display_labels=shown,
                                            include_values=len(labels) <= 30, xticks_rotation="vertical")
    correct = sum(t == p for t, p in zip(y_true, y_pred))
    ax.set_title(f"{correct}/{len(y_true)} correct ({100 * correct / max(1, len(y_true)):.1f}%)")
    if shared:
        ax.set_xlabel(f"predicted label ({shared})")
        ax.set_ylabel(f"true label ({shared})")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def run(args: argparse.Namespace) -> int:
    from episodes.files import list_image_files
    from fewshot.adaptation.classifier import load_classifier

    if args.top_k < 1:
        raise FewShotError(f"--top-k must be positive, got {args.top_k}")
    if args.reject is not None and not 0 <= args.reject <= 1:
        raise FewShotError(f"--reject must be a probability in [0, 1], got {args.reject}")
    if args.batch_size < 1:
        raise FewShotError(f"--batch-size must be positive, got {args.batch_size}")
    raw = []
    for p in args.paths:
        raw += [line.strip() for line in sys.stdin if line.strip()] if p == "-" else [p]
    if not raw:
        raise FewShotError("no images given (PATH... or '-' to read paths from stdin)")
    for out in (args.out, args.confusion):
        if out:
            ensure_writable_file(out, error=FewShotError)
    clf = load_classifier(args.model, device=args.device)
    if args.tta is not None or args.tta_arg:
        from fewshot.evaluation.tta import TTA, default_augment, override_tta, parse_tta_args

        base = clf.tta or TTA(1, default_augment(clf.preprocess.channels))
        tta = override_tta(base, args.tta, parse_tta_args(args.tta_arg))
        if tta.symmetries != base.symmetries:   # the head was fitted on features of that many blocks
            raise FewShotError(f"the model was adapted with {base.symmetries} TTA symmetries and its head "
                               f"works on features of that size; --tta-arg symmetries cannot change it "
                               f"(re-run fewshot adapt with symmetries={tta.symmetries})", args.model)
        clf.tta = tta
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files, truth = list_image_files(raw, strict=args.strict)
        pred = clf.predict(files, top_k=args.top_k, reject=args.reject, batch_size=args.batch_size,
                           strict=args.strict, progress=True)
    for w in caught:
        print(f"fewshot predict: warning: {w.message}", file=sys.stderr)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(pred.rows())
    sys.stdout.write(buf.getvalue())
    if args.out:
        atomic_write_text(Path(args.out), buf.getvalue())
        print(f"wrote {args.out} ({len(pred)} rows)", file=sys.stderr)
    if pred.skipped:
        print(f"fewshot predict: {len(pred.skipped)} file(s) skipped", file=sys.stderr)
    truth_of = dict(zip(files, truth))
    pairs = [(truth_of[s], lab) for s, lab in zip(pred.sources, pred.labels) if truth_of.get(s) is not None]
    if pairs:
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
        correct = sum(t == p for t, p in pairs)
        unknown_classes = sorted(set(y_true) - set(clf.class_names))
        rejected = sum(p == "unknown" for p in y_pred)
        print(f"accuracy: {correct / len(pairs):.4f} ({correct}/{len(pairs)} labelled images"
              + (f", {rejected} rejected" if args.reject is not None else "") + ")")
        if unknown_classes:
            print(f"note: {len(unknown_classes)} folder class(es) unknown to the model, "
                  f"e.g. {unknown_classes[0]!r}")
        labels = list(clf.class_names) + unknown_classes + (["unknown"] if "unknown" in y_pred else [])
        png = Path(args.confusion) if args.confusion else (
            Path(args.out).with_suffix(".confusion.png") if args.out else None)
        if png is not None:  # files only where asked: --confusion, or beside --out
            confusion_png(png, y_true, y_pred, labels)
            print(f"wrote {png}")
    return 0
