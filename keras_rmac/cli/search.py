"""`keras-rmac search`: the photos of an index most similar to a query."""

import argparse
import json
import logging
import os

from keras_rmac import indexing
from keras_rmac.cli import _common
from keras_rmac.cli.index import add_max_pixels_argument
from keras_rmac.cli.index import allow_pixels
from keras_rmac.data import image_io
from keras_rmac.display import display_path

logger = logging.getLogger(__name__)

_EPILOG = """\
examples:
  keras-rmac search --index photos_index query.jpg
  keras-rmac search --index photos_index query.jpg -k 20 --qe 5 \\
      --sheet results.png --html results.html

The query is described with the model, --max-size and --scales recorded
in the index (INDEX_DIR/model.keras), so it matches how the photos were
described. Prints one line per result: rank, score (inner product of
L2-normalised descriptors, 1 = identical) and path.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `search` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    parser = subparsers.add_parser(
        "search",
        help="Find the photos of an index most similar to a query image.",
        description=(
            "Describe QUERY_IMAGE with the index's own model and print the "
            "k most similar indexed photos."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", metavar="QUERY_IMAGE")
    parser.add_argument(
        "--index",
        required=True,
        metavar="INDEX_DIR",
        dest="index_dir",
        help="Index directory made by `keras-rmac index`.",
    )
    parser.add_argument(
        "-k",
        type=_common.positive_int,
        default=10,
        help="Number of results (default: 10).",
    )
    parser.add_argument(
        "--qe",
        type=_common.non_negative_int,
        default=0,
        metavar="K",
        help="Average query expansion with the top K results (default: 0, "
        "off). A compact index needs the descriptors kept by `index` "
        "(its default).",
    )
    parser.add_argument(
        "--qe-alpha",
        type=float,
        default=None,
        metavar="ALPHA",
        help="With --qe: alpha query expansion, each of the K results "
        "weighed by its score**ALPHA (e.g. 3) instead of 1.",
    )
    parser.add_argument(
        "--sheet",
        metavar="OUT.png",
        default=None,
        help="Write a contact sheet: the query and its results with rank "
        "and score.",
    )
    parser.add_argument(
        "--html",
        metavar="OUT.html",
        default=None,
        help="Write a self-contained HTML page (thumbnails embedded).",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print the results as JSON instead of a table.",
    )
    add_max_pixels_argument(parser, "the query image")
    parser.set_defaults(run=run)
    return parser


def format_table(results) -> str:
    """The results as an aligned `rank  score  path` table, each path in
    its one-line display form (`keras_rmac.display.display_path`)."""
    lines = [f"{'rank':>4}  {'score':>7}  path"]
    for hit in results:
        lines.append(
            f"{hit.rank:>4}  {hit.score:7.4f}  {display_path(hit.path)}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac search`; returns the exit status."""
    allow_pixels(args.max_pixels)
    try:
        index = indexing.PhotoIndex(args.index_dir, max_pixels=args.max_pixels)
    except (FileNotFoundError, indexing.IndexMismatchError) as exc:
        logger.error("%s", exc)
        return 1
    try:
        # Decoded as the index's photos were (PhotoIndex.extract).
        results = index.search(
            args.query, k=args.k, qe=args.qe, alpha=args.qe_alpha
        )
    except image_io.ImageError as err:
        logger.error("Cannot read the query image: %s", err)
        return 1
    except ValueError as exc:
        logger.error("%s", exc)
        return 1
    if args.json:
        print(
            json.dumps(
                [
                    {"rank": r.rank, "score": r.score, "path": r.path}
                    for r in results
                ],
                indent=1,
            )
        )
    else:
        print(format_table(results))
    if args.sheet or args.html:
        from keras_rmac import visualize

        for out in (args.sheet, args.html):
            # Create the output folder, as users expect of an output path.
            if out and os.path.dirname(out):
                os.makedirs(os.path.dirname(out), exist_ok=True)
        if args.sheet:
            visualize.contact_sheet(args.query, results, args.sheet)
            print(f"Contact sheet: {display_path(os.path.abspath(args.sheet))}")
        if args.html:
            visualize.write_html(
                args.query,
                results,
                args.html,
                title=f"{display_path(os.path.basename(args.query))} in "
                f"{display_path(args.index_dir)}",
            )
            print(f"HTML page: {display_path(os.path.abspath(args.html))}")
    return 0
