"""Argument types shared by the subcommands (argparse turns their errors into usage messages)."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """``"1,5"`` -> ``[1, 5]``: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_tta_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str) -> None:
    """``--tta N`` and ``--tta-arg K=V`` (eval, compare, adapt, predict); ``default`` says where the
    setting comes from when neither is given."""
    parser.add_argument("--tta", type=positive_int, default=None, metavar="N",
                        help=f"test-time augmentation: views per image, 1 = plain (default: {default})")
    parser.add_argument("--tta-arg", action="append", default=[], metavar="K=V",
                        help="TTA augmentation option, e.g. degrees=20, scale=0.8,1.2, mode=crop, flip=true, "
                             "seed=1 (repeatable; over the default's options)")


def positive_int(text: str) -> int:
    """One positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
