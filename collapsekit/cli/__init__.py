"""The `collapsekit` command: one thin subcommand module per public function."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from collapsekit.errors import CollapsekitError
from collapsekit.version import __version__

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
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CollapsekitError as exc:
        print(f"collapsekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"collapsekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
