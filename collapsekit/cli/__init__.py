"""The `collapsekit` command: one thin subcommand module per public function."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys

from collapsekit.errors import CollapsekitError
from collapsekit.version import __version__
from collapsekit.cli.common import check_outputs, is_main_process, os_error_line, remove_empty

ANSI = r"\x1b\[[0-9;]*[A-Za-z]"  # terminal escapes a library may put in a message

# Order in `collapsekit --help`; any other module of this package that defines HELP,
# DESCRIPTION, add_arguments(parser) and run(args) is added after these.
_ORDER = ["train", "report", "prune", "finetune", "validate", "mt_search", "plot", "export"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per subcommand module."""
    parser = argparse.ArgumentParser(
        prog="collapsekit",
        description="Predict, prevent and verify layer collapse under Global Magnitude Pruning.",
    )
    parser.add_argument("--version", action="version", version=f"collapsekit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "common"]
    for name in sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "add_arguments"):
            p = subparsers.add_parser(name.replace("_", "-"), help=module.HELP, description=module.DESCRIPTION)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    Every failure the user can act on ends as one line naming what to fix and exit
    status 2: bad input (CollapsekitError) and file-system trouble (any OSError,
    with its path). A closed stdout (`collapsekit report | head -1`) ends quietly.
    Under torchrun every rank meets the same bad input or file: rank 0 alone prints
    the line, the others exit with the same status silently.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    created: list = []  # output folders this run made: those still empty go again if it fails
    try:
        created = check_outputs(args)  # before any long work: a run is never lost to an unwritable --out
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE
    except CollapsekitError as exc:
        remove_empty(created)
        _error(args, re.sub(ANSI, '', str(exc)))
        return 2
    except OSError as exc:
        remove_empty(created)
        _error(args, os_error_line(exc))
        return 2
    except KeyboardInterrupt:
        remove_empty(created)
        print(f"collapsekit {args.command}: interrupted", file=sys.stderr)
        return 130


def _error(args: argparse.Namespace, line: str) -> None:
    """Print the one error line, on rank 0 only (one copy, not one per torchrun rank)."""
    if is_main_process():
        print(f"collapsekit {args.command}: error: {line}", file=sys.stderr)


def _silence_stdout() -> None:
    """Point stdout at devnull, so the interpreter's final flush into the closed pipe
    raises nothing (the recipe of Python's `signal` docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no real file (a test's capture)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
