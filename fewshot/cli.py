"""The ``fewshot`` command line: one subcommand per module in ``fewshot.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can cause (``DatasetError``, ``FewShotError``) are printed as one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from episodes.errors import DatasetError
from fewshot.errors import FewShotError

COMMANDS = ["train", "eval", "compare", "adapt", "predict", "ablate", "episodes"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot",
        description="Few-shot learning by metric learning: train an encoder, compare heads on novel classes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fewshot.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fewshot.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            return int(args._run(args) or 0)
        except (DatasetError, FewShotError) as exc:
            print(f"fewshot {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # the machine refused a read or write (full disk, permissions)
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"fewshot {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"fewshot {args.command}: interrupted", file=sys.stderr)
            return 130


def _one_line_warning(command: str):
    """``warnings.showwarning`` that prints ``fewshot CMD: warning: MESSAGE`` as one line (no
    source line under it), like errors."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"fewshot {command}: warning: {text}", file=file or sys.stderr)
    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
