"""`keras-rmac` command line: one argparse sub-command per module.

Each module named in `SUBCOMMANDS` exposes `add_parser(subparsers)`
(registering its sub-command with `--help` text and an example) and
`run(args) -> int`. Only the module of the sub-command being run is
imported, after `_quiet.quiet_logs` has set TensorFlow's log level:
`keras-rmac --help` starts without TensorFlow, and no sub-command prints
framework log lines unless `--verbose` is given.

Errors a sub-command does not handle itself end in one line on standard
error and exit status 1 (the traceback only with `--verbose`).
"""

import argparse
import importlib
import logging
import sys
import traceback

from keras_rmac.cli import _common
from keras_rmac.cli import _quiet

logger = logging.getLogger(__name__)

SUBCOMMANDS = {
    "index": "Index a folder of photos (incremental, resumable).",
    "search": "Find the photos of an index most similar to a query image.",
    "serve": "Serve an index: a JSON search API and a web page.",
    "export": "Export a SavedModel for TF Serving (image bytes -> descriptor).",
    "train": "Fine-tune R-MAC (contrastive, triplet or AP loss).",
    "clean": "Clean a noisy labelled image list (local features + RANSAC).",
    "train-rpn": "Train the region proposal network on a cleaned list's boxes.",
}
"""Sub-command name -> the summary `keras-rmac --help` lists (the same as
the `help=` its module gives, which a test checks)."""

_VERBOSE_FLAGS = ("-v", "--verbose")
_EXPECTED_ERRORS = (OSError, ValueError, TypeError, ImportError, RuntimeError)


def module_name(command: str) -> str:
    """The module of sub-command `command` (`train-rpn` -> `...train_rpn`)."""
    return "keras_rmac.cli." + command.replace("-", "_")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `keras-rmac` parser, with the full options of `command` only.

    Args:
        command: str or None. The sub-command whose module is imported and
            whose options are registered; the others are listed with their
            summaries but take no options. None imports no sub-command.

    Returns:
        An `argparse.ArgumentParser`.
    """
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
            "--sheet results.png\n\n"
            "Framework log lines (TensorFlow, absl, ScaNN) are shown only "
            "with --verbose."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        *_VERBOSE_FLAGS,
        action="store_true",
        help="debug logging, framework log lines and tracebacks",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUBCOMMANDS.items():
        if name == command:
            module = importlib.import_module(module_name(name))
            module.add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def _split(argv: list[str]) -> tuple[str | None, bool]:
    """The sub-command named in `argv` and whether `--verbose` precedes it.

    The top-level options take no value, so the sub-command is the first
    argument that is not an option.
    """
    for position, arg in enumerate(argv):
        if not arg.startswith("-"):
            command = arg if arg in SUBCOMMANDS else None
            return command, any(a in _VERBOSE_FLAGS for a in argv[:position])
    return None, any(a in _VERBOSE_FLAGS for a in argv)


def error_line(error: BaseException) -> str:
    """`error` as one readable line (without the `keras-rmac` prefix)."""
    if _common.is_download_failure(error):
        return _common.DOWNLOAD_HINT
    text = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, _EXPECTED_ERRORS):
        text = f"{type(error).__name__}: {text} (--verbose shows where)"
    return text


def main(argv=None) -> int:
    """Runs `keras-rmac` with `argv` (default: `sys.argv[1:]`).

    Returns:
        The exit status: the sub-command's, 1 for an error it left
        unhandled, 2 for bad arguments or no sub-command, 130 when
        interrupted.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command, verbose = _split(argv)
    with _quiet.quiet_logs(verbose):
        parser = build_parser(command)
        # Unknown options are an error, except where the sub-command
        # passes them on (`index --runner`: Beam pipeline options).
        args, extra = parser.parse_known_args(argv)
        takes_extra = getattr(args, "takes_extra", None)
        if extra and not (takes_extra and takes_extra(args)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        if not getattr(args, "run", None):
            parser.print_help()
            return 2
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:
            print(f"keras-rmac {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:  # One line, not a traceback.
            if verbose:
                traceback.print_exc()
            print(
                f"keras-rmac {args.command}: error: {error_line(error)}",
                file=sys.stderr,
            )
            return 1


if __name__ == "__main__":
    sys.exit(main())
