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


def key_value(text: str) -> str:
    """A ``KEY=VALUE`` option, kept as text (values are parsed where they are used)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return text
