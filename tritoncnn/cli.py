"""The ``tritoncnn`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module, imported only when it runs, with ``HELP`` (one line),
``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMANDS = {
    "env": "tritoncnn.env",
    "demo": "tritoncnn.demo",
    "train": "tritoncnn.models.train",
    "tune": "tritoncnn.tune",
    "bench": "tritoncnn.reports.bench",
    "report": "tritoncnn.reports.report",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from tritoncnn import __version__

    parser = argparse.ArgumentParser(prog="tritoncnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tritoncnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        # Importing every subcommand for --help would pull in all of torch's and Triton's kernels;
        # only the one asked for is loaded with its arguments.
        module = _load(name) if only in (None, name) else None
        help_ = getattr(module, "HELP", None) if module else None
        p = sub.add_parser(name, help=help_, description=help_)
        if module is not None:
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    only = wanted if wanted in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from tritoncnn import InterpreterWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        """The interpreter notice as its one line of text; other warnings as Python shows them."""
        if issubclass(category, InterpreterWarning):
            print(f"tritoncnn: {message}", file=sys.stderr if file is None else file)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return int(_load(args.command).main(args) or 0)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
