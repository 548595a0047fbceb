"""`keras-rmac` command line: one argparse sub-command per module.

Each module in `SUBCOMMANDS` exposes `add_parser(subparsers)` (registering
its sub-command with `--help` text and an example) and `run(args) -> int`.
"""

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = ("index", "search", "export", "train", "clean")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-rmac",
        description=(
            "R-MAC image retrieval: index a folder of photos, search it, "
            "train, clean landmark lists and export for TF Serving."
        ),
        epilog=(
            "example:\n"
            "  keras-rmac index photos/ --index my_index\n"
            "  keras-rmac search --index my_index query.jpg -k 10 "
            "--sheet results.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"keras_rmac.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
